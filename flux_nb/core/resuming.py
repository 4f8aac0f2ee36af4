"""What ``resume`` may take up: records left open by a crash, a restart, an interrupt or a full disk.

A record belongs to the process that last sent it (its ``owner``); ``flux_nb.owners.may_take_over`` says
whose records this process may take up: its own that no request here has queued or runs (in any session),
and a dead local process's. Those of another live process (a second kernel still polling them, or one of
another user), of another host (a shared folder: its liveness is not known) or of no known owner are left
alone; the submitted ones among them are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flux_nb.core.in_flight import CLAIMING, running_here
from flux_nb.core.results import Result
from flux_nb.history.store import HistoryStore, Record, RecordStatus
from flux_nb.owners import may_take_over, process_owner


@dataclass
class ResumePlan:
    """The records ``resume`` finishes, may send, settles as cut off, and leaves alone."""

    finish: list[Record] = field(default_factory=list)  # submitted: finished from their polling URLs
    unsent: list[Record] = field(default_factory=list)  # never sent: sent only when asked
    cut_off: list[Record] = field(default_factory=list)  # their process died mid-submit: outcome unknown
    elsewhere: list[Record] = field(default_factory=list)  # submitted, followed by another process or host


def _free(record: Record) -> bool:
    return may_take_over(record.owner, running_here=running_here(record.record_id))


def unsent_records(store: HistoryStore) -> list[Record]:
    """Never-sent records ``resume(unsent=True)`` may send: a dead process's, or this one's that nothing here runs."""
    with CLAIMING:
        return [r for r in store.unsettled() if r.status == RecordStatus.PENDING and _free(r)]


def plan(store: HistoryStore) -> ResumePlan:
    """Sort what is open in ``store`` by who may take it up now."""
    result = ResumePlan()
    with CLAIMING:
        free = [r for r in store.unsettled() if _free(r)]
        for record in store.resumable():
            if _free(record):
                result.finish.append(record)
            elif record.owner != process_owner():
                result.elsewhere.append(record)
    result.cut_off = [r for r in free if r.status == RecordStatus.SENDING]
    result.unsent = [r for r in free if r.status == RecordStatus.PENDING]
    return result


class Resumed(list[Result]):
    """``resume``'s results, one per record settled, and the records left alone (another process runs them)."""

    def __init__(self, results: list[Result], elsewhere: list[Record]) -> None:
        super().__init__(results)
        self.elsewhere = elsewhere

    def note(self) -> str:
        """One line on what was left alone ("" when nothing was)."""
        if not self.elsewhere:
            return ""
        owners = sorted({r.owner or "?" for r in self.elsewhere})
        return (
            f"{len(self.elsewhere)} submitted record(s) left alone: another running process, or one on another "
            f"host, follows them ({', '.join(owners)})"
        )


__all__ = ["ResumePlan", "Resumed", "plan", "unsent_records"]

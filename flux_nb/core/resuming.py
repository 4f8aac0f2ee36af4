"""What ``resume`` may take up: records left open by a crash, a restart, an interrupt or a full disk.

A record belongs to the process that last sent it (its ``owner``). Records of a dead process are fair game;
those of another live process (a second kernel still polling them) are left alone and counted; this
process's own are taken up unless they are in flight here right now.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flux_nb.core.ledger import Ledger
from flux_nb.history.store import HistoryStore, Record, RecordStatus
from flux_nb.owners import owner_is_alive, owner_is_gone, process_owner


@dataclass
class ResumePlan:
    """The records ``resume`` finishes, may send, settles as cut off, and leaves alone."""

    finish: list[Record] = field(default_factory=list)  # submitted: finished from their polling URLs
    unsent: list[Record] = field(default_factory=list)  # never sent: sent only when asked
    cut_off: list[Record] = field(default_factory=list)  # their process died mid-submit: outcome unknown
    elsewhere: list[Record] = field(default_factory=list)  # another live process runs them


def _mine_and_idle(record: Record, ledger: Ledger) -> bool:
    return record.owner == process_owner() and record.record_id not in ledger.in_flight


def unsent_records(store: HistoryStore, ledger: Ledger) -> list[Record]:
    """Never-sent records ``resume(unsent=True)`` may send: a dead process's, or this one's that no request runs."""
    dead = [r for r in store.orphans() if r.status == RecordStatus.PENDING]
    mine = store.query(status=RecordStatus.PENDING.value, owner=process_owner())
    ids = {r.record_id for r in dead}
    own = [store.get(i) for i in mine["record_id"] if i not in ids and i not in ledger.in_flight]
    return dead + [r for r in own if r is not None and r.status == RecordStatus.PENDING]


def plan(store: HistoryStore, ledger: Ledger) -> ResumePlan:
    """Sort what is open in ``store`` by who may take it up now."""
    result = ResumePlan()
    result.cut_off = [r for r in store.orphans() if r.status == RecordStatus.SENDING]
    for record in store.resumable():
        if owner_is_alive(record.owner):
            result.elsewhere.append(record)
        elif owner_is_gone(record.owner) or record.owner != process_owner() or _mine_and_idle(record, ledger):
            result.finish.append(record)
    result.unsent = unsent_records(store, ledger)
    return result


class Resumed(list):  # type: ignore[type-arg]
    """``resume``'s results, one per record settled, and the records left alone (another live process runs them)."""

    def __init__(self, results: list, elsewhere: list[Record]) -> None:  # type: ignore[type-arg]
        super().__init__(results)
        self.elsewhere = elsewhere

    def note(self) -> str:
        """One line on what was left alone ("" when nothing was)."""
        if not self.elsewhere:
            return ""
        owners = sorted({r.owner or "?" for r in self.elsewhere})
        return (
            f"{len(self.elsewhere)} submitted record(s) left alone: another running process follows them "
            f"({', '.join(owners)})"
        )


__all__ = ["ResumePlan", "Resumed", "plan", "unsent_records"]

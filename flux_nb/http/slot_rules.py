"""Who gets a slot: first come, first served across processes, decided from a snapshot of the slot table.

Pure but for ``hand_to_parked``, which writes its decision in the caller's transaction.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from flux_nb.owners import process_owner as lease_owner

# What ``SlotTable.try_take`` answers when it took the slot (else: how many waiters are ahead).
TAKEN = -1


@dataclass(frozen=True)
class Lease:
    """One slot held by this process until released."""

    lease_id: str
    scope: str
    owner: str
    acquired_at: float


def hand_to_parked(db: sqlite3.Connection, scope: str, snap: Snapshot, limit: int, parked: set[str]) -> list[str]:
    """Give the free slots of ``snap`` to this process's parked waiters whose turn it is: their lease ids.

    First come, first served across processes: a waiter of another process ahead in line keeps its place
    (it is woken, and takes the slot itself: a process that stopped looking cannot be handed one it would
    hold while stopped). Parked leases no longer in line (cancelled meanwhile) never get one.
    """
    taken: list[str] = []
    free = limit - snap.live
    for lease_id, looking, _ in snap.line:
        if free <= 0:
            break
        if lease_id in parked:
            taken.append(lease_id)
            free -= 1
        elif looking:
            free -= 1  # kept for a waiter ahead (of another process, or of this one between two looks)
    if taken:
        now = time.time()
        me = lease_owner()
        db.executemany("DELETE FROM leases WHERE lease_id = ?", [(i,) for i in snap.stale_leases])
        db.executemany("DELETE FROM waiters WHERE lease_id = ?", [(i,) for i in snap.stale_waiters])
        db.executemany("DELETE FROM waiters WHERE lease_id = ?", [(i,) for i in taken])
        db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?)", [(i, scope, me, now) for i in taken])
        gone = set(taken)
        snap.line = [entry for entry in snap.line if entry[0] not in gone]
        snap.live += len(taken)
    return taken


@dataclass
class Snapshot:
    """A scope as ``SlotTable._snapshot`` reads it: live leases, and the line (lease_id, still looking, owner)."""

    live: int = 0
    line: list[tuple[str, bool, str]] = field(default_factory=list)
    stale_leases: list[str] = field(default_factory=list)
    stale_waiters: list[str] = field(default_factory=list)


@dataclass
class Decided:
    """What a look means for some leases: an answer each (TAKEN or how many are ahead), and the rows to write."""

    answers: list[int] = field(default_factory=list)
    taken: list[Lease] = field(default_factory=list)
    joined: list[Lease] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.taken or self.joined)


def decide(snap: Snapshot, leases: list[Lease], limit: int) -> Decided:
    """Which of ``leases`` take a slot (first come, first served: those in line in its order, then new ones)."""
    position = {lease_id: i for i, (lease_id, *_) in enumerate(snap.line)}
    ahead_of, counting = [], 0
    for _, looking, _ in snap.line:
        ahead_of.append(counting)
        counting += looking
    order = sorted(range(len(leases)), key=lambda i: position.get(leases[i].lease_id, len(position) + i))
    answers, decided = [0] * len(leases), Decided()
    live, moved, joined = snap.live, 0, 0  # moved: waiters of this look that took a slot (no longer ahead)
    for i in order:
        lease = leases[i]
        at = position.get(lease.lease_id)
        ahead = ahead_of[at] - moved if at is not None else counting - moved + joined
        if live + ahead < limit:
            answers[i] = TAKEN
            decided.taken.append(lease)
            live += 1
            moved += at is not None and snap.line[at][1]
        else:
            answers[i] = ahead
            if at is None:
                decided.joined.append(lease)
                joined += 1
    decided.answers = answers
    return decided

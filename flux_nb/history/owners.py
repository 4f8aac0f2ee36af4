"""Which process owns a record, and whether that process still runs.

A record's ``owner`` is ``host:pid@start``: the start time (from /proc) tells a later process
that reuses the pid (a restarted container) from the one that wrote the record.
"""

from __future__ import annotations

import functools
import os
import socket


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def process_owner() -> str:
    """This process, as a record's ``owner``: ``host:pid``, plus ``@start`` where the start time is
    known, so that a later process given the same pid (a restarted container) is not taken for it."""
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> str:
    start = _start_time(pid)
    return f"{socket.gethostname()}:{pid}" + (f"@{start}" if start else "")


def owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` is a process of this host that no longer runs (other hosts: not known, False)."""
    host, _, process = (owner or "").rpartition(":")
    pid, _, start = process.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if start and _start_time(int(pid)) not in (start, None):
        return True  # that pid now belongs to another process
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False

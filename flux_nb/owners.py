"""Which process owns something (a history record), and whether that process still runs.

An owner is ``host:pid@start``: the start time (from /proc) tells a later process that reuses the pid
(a restarted container) from the one that wrote the row. Owners of this host can be checked; those of
another host (a shared home folder) cannot, and are taken as alive. ``may_take_over`` is the one rule
for taking up work an owner left: only this process's own (when nothing here runs it) or a dead local process's.
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
    """This process as an owner: ``host:pid``, plus ``@start`` where the start time is known."""
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> str:
    start = _start_time(pid)
    return f"{socket.gethostname()}:{pid}" + (f"@{start}" if start else "")


def is_local(owner: str | None) -> bool:
    """True for an owner whose liveness can be checked: one of this host (not on Windows, where signal 0 is Ctrl-C)."""
    return os.name != "nt" and (owner or "").rpartition(":")[0] == socket.gethostname()


def owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` is a process of this host that no longer runs (other hosts: not known, False)."""
    pid, _, start = (owner or "").rpartition(":")[2].partition("@")
    if not is_local(owner) or not pid.isdigit():
        return False
    if start and _start_time(int(pid)) not in (start, None):
        return True  # that pid now belongs to another process
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):  # no such process, or a pid no process can have
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def may_take_over(owner: str | None, *, running_here: bool = False) -> bool:
    """True when this process may take up work ``owner`` left: never what a request here runs now
    (``running_here``); its own otherwise; else only a process of this host that no longer runs. A live
    process (one answering EPERM included), another host's and an unknown owner keep their work.

    >>> may_take_over(process_owner())
    True
    >>> may_take_over("another-host:1")
    False
    """
    if running_here:
        return False
    return owner == process_owner() or owner_is_gone(owner)


__all__ = ["is_local", "may_take_over", "owner_is_gone", "process_owner"]

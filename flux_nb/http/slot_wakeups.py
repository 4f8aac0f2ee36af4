"""Wake-ups between processes for the slot table: a slot given back in one process reaches waiters in another at once.

The table stays the single source of truth; a wake-up only says "look again now", and a waiter that never gets
one still looks on its own after a short pause. A process listens while it has waiters, on one AF_UNIX datagram
socket in the slots folder, named after its owner (``flux_nb.owners``: host, pid, start time)::

    <folder>/wake/<host hash>-<pid>-<start>.sock

A process that gives a lease back (or leaves the line) reads, in the same transaction, whose turn it is now
(the owners of the first waiters a look would let in) and after its commit sends one byte to each of their
sockets, never waiting (a full queue already holds a wake-up); waiters further back are not disturbed. A
socket left by a process of this host that no longer runs is unlinked by a sender that finds it refusing, and
by any process opening its own; one of another host is left alone. Where AF_UNIX is missing (Windows), or the
folder's path is too long for a socket address, waiters only poll.

One thread per listening process reads the socket, drains what has queued and calls ``on_wake`` once, which
wakes that process's waiters on whichever event loops they run.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import select
import socket
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from flux_nb.owners import owner_is_gone, process_owner

WAKE_DIR = "wake"
SUFFIX = ".sock"
# sun_path holds 108 bytes on Linux, 104 on macOS and the BSDs, the terminating NUL included.
MAX_ADDRESS = 103
SUPPORTED = hasattr(socket, "AF_UNIX") and os.name != "nt"


def _host_hash(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def socket_name(owner: str) -> str:
    """The socket file name of ``owner`` (``host:pid@start``): ``<host hash>-<pid>-<start>.sock``."""
    host, _, process = owner.rpartition(":")
    pid, _, start = process.partition("@")
    return f"{_host_hash(host)}-{pid}-{start}{SUFFIX}"


def owner_of(name: str) -> str | None:
    """The owner a socket file of THIS host belongs to, or None (another host's, or not a socket name)."""
    host_hash, _, rest = name.removesuffix(SUFFIX).partition("-")
    pid, _, start = rest.partition("-")
    host = socket.gethostname()
    if not name.endswith(SUFFIX) or host_hash != _host_hash(host) or not pid.isdigit():
        return None
    return f"{host}:{pid}" + (f"@{start}" if start else "")


class Wakeups:
    """This process's wake-up socket for one slots folder, and the sending side of everyone else's.

    ``hold()`` while a coroutine waits (the socket is opened by the first holder, closed and unlinked when the
    last lets go); ``notify(owners)`` after a commit that may let their waiters in. ``sent`` and ``received``
    count the datagrams, ``wakes`` the times ``on_wake`` ran.
    """

    def __init__(self, folder: Path, on_wake: Callable[[], None], *, enabled: bool = SUPPORTED) -> None:
        self.folder = Path(folder) / WAKE_DIR
        self._on_wake = on_wake
        self._lock = threading.Lock()
        self._holders = 0
        self._listener: _Listener | None = None
        self._sender: socket.socket | None = None
        self._pid = os.getpid()
        self.enabled = enabled
        self.sent = self.received = self.wakes = 0
        _OPEN.add(self)

    def __repr__(self) -> str:
        return f"Wakeups({str(self.folder)!r}, enabled={self.enabled}, listening={self.listening})"

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def path(self) -> Path:
        """Where this process's socket lives (while it listens)."""
        return self.folder / socket_name(process_owner())

    def hold(self) -> bool:
        """Listen (from now on) while the caller waits; True if the socket was opened just now.

        A caller that gets True looks at the table once more before it waits: a slot given back before the
        socket existed sent it nothing.
        """
        if not self.enabled:
            return False
        with self._lock:
            self._after_fork()
            self._holders += 1
            if self._listener is not None or len(os.fsencode(self.path)) > MAX_ADDRESS:
                return False
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._listener = _Listener(self.path, self._woken)
            except OSError:
                return False  # polling still finds the slot
        self.remove_dead()
        return True

    def release(self) -> None:
        """The caller no longer waits; the last one out closes the socket and removes it."""
        if not self.enabled:
            return
        with self._lock:
            self._after_fork()
            self._holders = max(0, self._holders - 1)
            if self._holders == 0:
                self._close()

    def close(self) -> None:
        """Stop listening whoever still holds (at exit)."""
        with self._lock:
            self._holders = 0
            self._close()

    def _close(self) -> None:
        self._after_fork()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sender:
                sender.setblocking(False)
                listener.stop(sender)

    def _after_fork(self) -> None:
        """A forked child starts with nothing: the socket and its thread are the parent's."""
        if self._pid != os.getpid():
            self._pid, self._holders, self._listener, self._sender = os.getpid(), 0, None, None

    def _woken(self, datagrams: int) -> None:
        self.received += datagrams
        self.wakes += 1
        self._on_wake()

    def _send_socket(self) -> socket.socket:
        with self._lock:
            self._after_fork()
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            return self._sender

    def notify(self, owners: set[str] | None = None) -> int:
        """Send one byte to the socket of each of ``owners`` (None: every other process listening on this
        folder), never waiting; how many were sent. A missing or refusing socket is no error."""
        if not self.enabled or owners == set():
            return 0
        sender = self._send_socket()
        if owners is None:
            mine = socket_name(process_owner())
            try:
                names = [entry.name for entry in os.scandir(self.folder) if entry.name.endswith(SUFFIX)]
            except OSError:
                return 0
            names = [name for name in names if name != mine]
        else:
            names = [socket_name(owner) for owner in owners]
        sent = 0
        for name in names:
            try:
                sender.sendto(b"\1", os.fspath(self.folder / name))
                sent += 1
            except (BlockingIOError, InterruptedError):
                sent += 1  # its queue is full: a wake-up is already waiting there
            except (ConnectionRefusedError, FileNotFoundError):
                self._unlink_if_dead(name)
            except OSError:
                continue
        self.sent += sent
        return sent

    def remove_dead(self) -> int:
        """Unlink the sockets that processes of this host which no longer run left behind; how many."""
        try:
            names = [entry.name for entry in os.scandir(self.folder) if entry.name.endswith(SUFFIX)]
        except OSError:
            return 0
        return sum(self._unlink_if_dead(name) for name in names)

    def _unlink_if_dead(self, name: str) -> bool:
        owner = owner_of(name)
        if owner is None or not owner_is_gone(owner):
            return False
        with contextlib.suppress(OSError):
            (self.folder / name).unlink()
        return True


class _Listener:
    """One bound socket and the thread reading it; ``stop`` closes both and removes the file."""

    def __init__(self, path: Path, woken: Callable[[int], None]) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this very owner (a pid is never reused with the same start time)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(os.fspath(path))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(woken,), name="flux_nb-slots-wakeups", daemon=True)
        self.thread.start()

    def _run(self, woken: Callable[[int], None]) -> None:
        try:
            while not self.stopping.is_set():
                select.select([self.sock], [], [])
                datagrams = 0
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while self.sock.recv(64):
                        datagrams += 1
                if datagrams and not self.stopping.is_set():
                    woken(datagrams)
        except (OSError, ValueError):
            pass  # closed under us
        finally:
            self.sock.close()

    def stop(self, sender: socket.socket) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            sender.sendto(b"\0", os.fspath(self.path))  # unblock the thread's select
        with contextlib.suppress(OSError):
            self.path.unlink()


_OPEN: weakref.WeakSet[Wakeups] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for wakeups in list(_OPEN):
        wakeups.close()


__all__ = ["MAX_ADDRESS", "SUPPORTED", "WAKE_DIR", "Wakeups", "owner_of", "socket_name"]

"""Run locks that expire with their holder: ``<workdir>.lock`` of :mod:`mtlrnn.compare`.

A lock is a JSON record of its holder (host, boot id, pid namespace, pid and the pid's start
time, a nonce, the lease, and the training subprocess once started), created only by an
exclusive hard link so nobody reads half of one. On the holder's host it is stale when none of
its processes runs (a zombie or a recycled pid with another start time does not count); held
from another host (a shared filesystem), unreadable, or in the format of earlier versions, it
is stale once its mtime is older than the lease, which the holder renews every lease/4 from a
thread. Takers of one stale lock go one at a time through a claim file; the winner renames the
lock aside, checks it moved exactly the file it judged stale, and creates its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from typing import Any

from mtlrnn.config import ConfigError
from mtlrnn.fileio import atomic_writer

__all__ = ["LOCK_LEASE_S", "Lock", "acquire", "lease_seconds"]

#: Default lease of a lock held from another host, in seconds (MTLRNN_LOCK_LEASE_S).
LOCK_LEASE_S = 300.0
_LEASE_ENV = "MTLRNN_LOCK_LEASE_S"
#: The lock format of earlier versions: ``pid P host H since T``.
_OLD_LOCK = re.compile(r"pid (\d+) host (\S+) since (\d+)")


def lease_seconds(lease_s: float | None) -> float:
    """The lease: ``lease_s``, else ``$MTLRNN_LOCK_LEASE_S``, else 300 s."""
    key, value = "lock_lease_s", lease_s
    if value is None:
        key, value = _LEASE_ENV, os.environ.get(_LEASE_ENV) or LOCK_LEASE_S
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{key}: must be a number of seconds > 0; got {value!r}")
    return seconds


def _read_text(path: str) -> str | None:
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    return None


@functools.lru_cache(maxsize=1)
def _host_identity() -> dict[str, str | None]:
    """This host: its name, boot id and pid namespace (None where the OS has none)."""
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        pidns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {
        "host": socket.gethostname(),
        "boot_id": boot.strip() if boot else None,
        "pidns": pidns,
    }


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time in clock ticks since boot)`` of a Linux process, else None."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _process_record(pid: int) -> dict[str, Any]:
    stat = _proc_stat(pid)
    return {"pid": pid, "start": stat[1] if stat else None}


def _alive(pid: Any, start: Any) -> bool:
    """Whether process ``pid`` of this host runs and is the one that started at ``start``."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return True  # cannot tell: assume the holder lives
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, and that is all we can know
    state, now_start = stat
    if state in ("Z", "X"):
        return False  # exited, not yet reaped by its parent
    return start is None or str(start) == now_start


def _lock_info(text: str | None) -> dict[str, Any] | None:
    """The holder recorded in a lock file's text; None when it cannot be read."""
    if not text:
        return None
    with contextlib.suppress(ValueError):
        info = json.loads(text)
        if isinstance(info, dict):
            return info
    old = _OLD_LOCK.search(text)
    if old:  # an earlier version's lock: no start time, no boot id, no lease renewal
        return {"pid": int(old[1]), "host": old[2], "boot_id": None, "pidns": None}
    return None


def _lock_state(
    info: dict[str, Any] | None, mtime: float, lease_s: float, now: float
) -> tuple[bool, str]:
    """``(stale, who or why)`` of a lock whose holder is ``info``, last touched at ``mtime``."""
    here = _host_identity()
    where = f"pid {info.get('pid')} on {info.get('host')}" if info else "an unreadable holder"
    local = (
        info is not None
        and info.get("host") == here["host"]
        and info.get("boot_id") == here["boot_id"]
        and info.get("pidns") == here["pidns"]
        and os.name == "posix"
    )
    if local:
        procs = [info, *([info["child"]] if isinstance(info.get("child"), dict) else [])]
        if any(_alive(p.get("pid"), p.get("start")) for p in procs):
            return False, f"{where} (running)"
        return True, f"{where} is no longer running"
    # Another host (or a holder this host cannot check): the lease must have been renewed.
    recorded = info.get("lease_s") if info else None
    if isinstance(recorded, int | float) and not isinstance(recorded, bool) and recorded > 0:
        lease_s = max(lease_s, float(recorded))
    age = now - mtime
    if age > lease_s:
        return True, f"{where} has not renewed it for {age:.0f} s (lease {lease_s:.0f} s)"
    return False, f"{where}, renewed {max(age, 0.0):.0f} s ago (lease {lease_s:.0f} s)"


def _create_exclusive(path: str, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; readers never see it half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".new", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails where path exists
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # no hard links on this filesystem
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _snapshot(path: str) -> tuple[tuple[int, int], float, str] | None:
    """``((device, inode), mtime, text)`` of ``path``; None when it is not there."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino), st.st_mtime, text


def _holder_record(lease_s: float) -> dict[str, Any]:
    """What a lock (or a takeover claim) records about the process that holds it."""
    return {
        "version": 1,
        "nonce": uuid.uuid4().hex,
        **_host_identity(),
        **_process_record(os.getpid()),
        "child": None,
        "since": round(time.time(), 3),
        "lease_s": lease_s,
    }


def _take_over(
    path: str, judged: tuple[tuple[int, int], float, str], lease_s: float, depth: int = 0
) -> bool:
    """Remove the stale lock ``judged`` from ``path``; False if it is not (or no longer) there.

    Takers of one stale lock first create ``<path>.takeover-<hash of that lock>``
    exclusively, so only one of them at a time moves it; it checks that ``path`` still
    holds the very file it judged (inode and text, with its unique nonce), renames it
    aside and checks again. Nobody but the lock's creator ever writes ``path`` (and
    creation is an exclusive link), so a taker never moves a fresh lock, and after a
    takeover exactly one process creates the next lock. A claim left by a taker that died
    meanwhile expires like a lock (a claim of a claim, at most three deep).
    """
    identity = f"{judged[0][0]}:{judged[0][1]}:{judged[2]}".encode("utf-8", "surrogatepass")
    claim = f"{path}.takeover-{hashlib.sha256(identity).hexdigest()[:16]}"
    if not _create_exclusive(claim, json.dumps(_holder_record(lease_s)) + "\n"):
        held = _snapshot(claim)
        if held is not None and depth < 3:
            stale, _ = _lock_state(_lock_info(held[2]), held[1], lease_s, time.time())
            if stale:
                _take_over(claim, held, lease_s, depth + 1)
        return False  # being taken over right now: the caller looks again
    try:
        if _snapshot(path) != judged:
            return False  # gone, renewed or replaced since it was judged
        aside = f"{path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        moved = _snapshot(aside)
        if moved is not None and (moved[0], moved[2]) == (judged[0], judged[2]):
            with contextlib.suppress(OSError):
                os.remove(aside)
            return True
        # Only a holder past its lease that released its lock just now gets here: put back
        # what was moved unless a newer lock is there already.
        with contextlib.suppress(OSError):
            os.link(aside, path)
        with contextlib.suppress(OSError):
            os.remove(aside)
        return False
    finally:
        with contextlib.suppress(OSError):
            os.remove(claim)


class Lock:
    """A held ``<workdir>.lock``: renewed from a thread, removed on :meth:`release`."""

    def __init__(self, path: str, record: dict[str, Any], lease_s: float):
        self.path = path
        self.record = record
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._renew, name="mtlrnn-lock", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:
        info = _lock_info(_read_text(self.path))
        return info is not None and info.get("nonce") == self.record["nonce"]

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            with self._mutex:
                if self._ours():
                    with contextlib.suppress(OSError):
                        os.utime(self.path)
                elif os.path.exists(self.path):
                    logging.getLogger("mtlrnn").warning(
                        f"{self.path} was taken over by another process while this one held "
                        "it (lease too short for this filesystem?)"
                    )
                    return

    def set_child(self, pid: int) -> None:
        """Record the training subprocess: the lock stays live while either process runs."""
        with self._mutex:
            if not self._ours():
                return
            self.record["child"] = _process_record(pid)
            text = json.dumps(self.record) + "\n"
            with contextlib.suppress(OSError), atomic_writer(self.path) as f:
                f.write(text)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._mutex, contextlib.suppress(FileNotFoundError):
            if self._ours():  # never remove a lock another process has taken over
                os.remove(self.path)


def acquire(path: str, lease_s: float) -> tuple[Lock | None, list[str]]:
    """Take the lock at ``path``: ``(the lock, notes)``, or ``(None, [who holds it])``."""
    notes: list[str] = []
    record = _holder_record(lease_s)
    text = json.dumps(record) + "\n"
    for _ in range(100):
        if _create_exclusive(path, text):
            return Lock(path, record, lease_s), notes
        judged = _snapshot(path)
        if judged is None:
            continue  # released meanwhile
        stale, why = _lock_state(_lock_info(judged[2]), judged[1], lease_s, time.time())
        if not stale:
            return None, [why]
        if _take_over(path, judged, lease_s):
            notes.append(f"took over a stale lock: {why}")
        else:
            time.sleep(0.01)  # another process is taking it over: look again
    return None, ["other processes kept taking it over"]

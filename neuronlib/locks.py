"""Temporary files and folders in caches that several processes, containers or machines may share.

A temporary entry (the folder a model is converted into, a partial download, a results entry being written) is
created by :func:`temporary` next to a lock file ``ENTRY.lock`` that its creator holds (``fcntl.flock``) for as
long as it works on the entry; the lock file records host, pid and start time for people reading the folder.
:func:`remove_stale` judges an entry stale only when it can take that lock itself: the kernel, or the NFS lock
manager, releases a lock when its holder dies, on whichever machine and in whichever PID namespace, whereas a
process id means nothing to another machine or container. An entry without a lock file (left by an older neuronlib)
is stale once it is older than ``max_age_s``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
LEGACY_MAX_AGE_S = 6 * 3600
_ORPHAN_LOCK_AGE_S = 60  # a lock file without its entry: its creator may be between creating one and the other
_held: set[str] = set()  # entries this process is working on (POSIX locks over NFS do not exclude the same process)


@contextmanager
def temporary(directory: Path, prefix: str, *, folder: bool = False, suffix: str = "") -> Iterator[Path]:
    """A new file (or, with ``folder=True``, folder) ``directory/prefix...suffix``, locked while the block runs and
    removed after it unless the block moved it away (``os.replace`` into its final place)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, lock_name = tempfile.mkstemp(prefix=prefix, suffix=suffix + LOCK_SUFFIX, dir=directory)
    lock = Path(lock_name)
    entry = lock.with_name(lock.name[: -len(LOCK_SUFFIX)])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows the name yet: this does not wait
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}).encode())
        if folder:
            entry.mkdir()
        else:
            os.close(os.open(entry, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        _held.add(str(entry))
        try:
            yield entry
        finally:
            _held.discard(str(entry))
            _remove(entry)
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        try:
            entry.unlink(missing_ok=True)
        except OSError:
            pass


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _take(lock: Path):
    """An open, exclusively locked descriptor of ``lock``, or None while another process holds it (or it is gone)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _candidates(directory: Path, prefix: str) -> list[Path]:
    try:
        return [p for p in Path(directory).iterdir() if p.name.startswith(prefix)]
    except OSError:  # missing or unreadable folder: nothing to judge
        return []


def is_stale(entry: Path, *, max_age_s: float = LEGACY_MAX_AGE_S) -> bool:
    """Whether ``entry`` is left by a run that is over (see the module docstring); does not remove anything."""
    if str(entry) in _held:
        return False
    lock = entry.with_name(entry.name + LOCK_SUFFIX)
    if not lock.exists():
        return _age(entry) > max_age_s
    fd = _take(lock)
    if fd is None:
        return False
    os.close(fd)
    return True


def remove_stale(directory: Path, prefix: str, *, max_age_s: float = LEGACY_MAX_AGE_S) -> list[Path]:
    """Remove the entries ``directory/prefix*`` (and their lock files) whose run is over; returns what went."""
    removed = []
    for entry in _candidates(directory, prefix):
        if entry.name.endswith(LOCK_SUFFIX) or str(entry) in _held:
            continue
        lock = entry.with_name(entry.name + LOCK_SUFFIX)
        if lock.exists():
            fd = _take(lock)
            if fd is None:
                continue  # its writer is alive, here or on another machine
            try:
                _remove(entry)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        elif _age(entry) > max_age_s:
            _remove(entry)
        else:
            continue
        logger.info(f"removed {entry.name}, left in {directory} by an interrupted run")
        removed.append(entry)
    for lock in _candidates(directory, prefix):  # lock files whose entry is gone and whose holder is too
        owner = lock.with_name(lock.name[: -len(LOCK_SUFFIX)])
        if lock.name.endswith(LOCK_SUFFIX) and not owner.exists() and _age(lock) > _ORPHAN_LOCK_AGE_S:
            fd = _take(lock)
            if fd is not None:
                lock.unlink(missing_ok=True)
                os.close(fd)
    return removed


def stale_entries(directory: Path, markers: tuple[str, ...] = (".tmp-", ".partial-")) -> list[Path]:
    """The temporary entries under ``directory`` (names holding one of ``markers``) that :func:`remove_stale`
    would remove: left by runs that are over, not the ones a live process is writing."""
    return [p for p in _candidates(directory, "") if any(m in p.name for m in markers)
            and not p.name.endswith(LOCK_SUFFIX) and is_stale(p)]

"""Output files, checked and claimed before any work.

Every file a command will write is checked up front (results.check_writable: its folder exists, it
is not a folder, it can be written), no two outputs of one command are the same file (one would
silently replace the other), and each is claimed with a lock so that a second dcnbench run writing
the same file stops at once, naming the run that holds it, instead of both writing and the last
one silently winning. The lock is `fcntl.flock` on a hidden file beside the output
(`.NAME.dcnbench-lock`) holding the holder's pid, command line and start time: the kernel releases
it when the holder exits or dies, so a crashed run never leaves a stale claim; the lock file is
removed at exit. Special files (/dev/null) are neither locked nor compared.
"""

from __future__ import annotations

import atexit
import datetime as dt
import fcntl
import os
import shlex
import sys
from pathlib import Path

from dcnbench.errors import ResultsFileError, UsageError
from dcnbench.results import check_writable

_held: dict[Path, int] = {}  # lock file -> its open descriptor, for as long as this process runs


def claim(outputs: list[tuple[str, Path | None]]) -> None:
    """Check and lock every (option, path) a command will write; None paths are skipped."""
    given = [(option, Path(path)) for option, path in outputs if path is not None]
    for option, path in given:
        check_writable(path, option)
    regular = [(option, path) for option, path in given if not (path.exists() and not path.is_file())]
    seen: dict[Path, str] = {}
    for option, path in regular:
        key = path.resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} are the same file, {path}: one would replace the other",
                             hint=f"give {option} another path")
        seen[key] = option
    for option, path in regular:
        _lock(path, option)


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.dcnbench-lock")


def _lock(path: Path, option: str) -> None:
    lock = lock_path(path)
    if lock.resolve() in _held:
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ResultsFileError(f"{option} {path} is being written by another dcnbench run ({holder})",
                                   hint=f"wait for that run to finish, or give {option} another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:  # its holder removed it between our open and our lock: take a fresh one
            same = False
        if same:
            break
        os.close(fd)
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    text = f"pid {os.getpid()}, `{shlex.join(['dcnbench', *sys.argv[1:]])}`, since {started}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    _held[lock.resolve()] = fd


def release(paths) -> None:
    """Give up this process's claims on `paths` (those it holds; others are ignored)."""
    for path in paths:
        _unlock(lock_path(Path(path)).resolve())


def release_all() -> None:
    """Remove and unlock every claim this process holds (at exit; the kernel unlocks after a crash)."""
    for lock in list(_held):
        _unlock(lock)


def _unlock(lock: Path) -> None:
    if lock in _held:
        try:
            lock.unlink(missing_ok=True)
        finally:
            os.close(_held.pop(lock))


atexit.register(release_all)

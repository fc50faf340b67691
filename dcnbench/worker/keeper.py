"""Containment: nothing a worker starts outlives it, not even a process that left its session.

A worker runs in a session of its own, and killing that session's process group stops what the
framework or a plugin started, unless it called setsid() (`subprocess.Popen(...,
start_new_session=True)`): such a process has a group of its own, and when its parent dies Linux
re-parents it to init, where it runs on. So the worker program forks first (`contain()`, standard
library only, as main.py): the parent, the keeper, marks itself a child subreaper
(PR_SET_CHILD_SUBREAPER, unprivileged, Linux 3.4+), so every orphan below it is re-parented to it
instead of init, and the child goes on to be the worker. When the worker ends (it exits, crashes, or
the keeper kills it on SIGTERM, which is how dcnbench closes a worker, or because dcnbench died:
the keeper's parent-death signal), the keeper kills every process left below it, round after round
until none is left, then exits with the worker's own status (its exit code, or the same signal), so
dcnbench reports the worker's death as before. No cgroups, no privileges. Elsewhere than Linux,
`contain()` does nothing.
"""

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def contain() -> None:
    """Fork: return in the child (the worker); the parent keeps it and everything below it, then exits."""
    parent = os.getppid()
    if not sys.platform.startswith("linux") or not _prctl(PR_SET_CHILD_SUBREAPER, 1):
        return
    worker = os.fork()
    if worker == 0:
        return
    _keep(worker, parent)


def _children() -> list[int]:
    """This process's children (adopted orphans included)."""
    me, found = os.getpid(), []
    try:
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children") as fh:
                found += [int(pid) for pid in fh.read().split()]
        return found
    except OSError:  # a kernel without /proc/PID/task/TID/children: read every process's parent
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _keep(worker: int, parent: int) -> None:
    # The protocol pipes are the worker's alone: dcnbench sees end-of-file when the worker is gone.
    for fd in (0, 1):
        os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is dcnbench's to handle

    running = [True]  # once the worker is reaped its pid may be another process's: never signal it then

    def stop(signum, frame):
        if running[0]:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # dcnbench died without closing this worker
    if os.getppid() != parent:  # it died before prctl took effect
        stop(None, None)
    status = None
    while status is None:  # reap adopted orphans as they end, until the worker itself does
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == worker:
            running[0], status = False, code
    while True:  # then everything still below: each round's killed children hand theirs to this process
        left = _children()
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in left:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    if status is None or os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status) if status is not None else 1)
    sig = os.WTERMSIG(status)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the worker's crash, not a core of this process
    except (ImportError, ValueError, OSError):
        pass
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)

"""dcnbench's side of every worker: an environment declaration, and one client for all of them.

A backend that runs out of process declares a `WorkerEnv`: its framework file (run by main.py),
and, when it lives in its own environment, the hashed requirements file, Python version and
distribution that make and identify that environment (`make <name>-env`). A `WorkerClient` then
starts the worker, checks its hello (protocol version, framework, `ok`), gives every request a
deadline (the write and the read), kills the worker after a crash, a hang or a malformed reply
and starts a fresh one for the next request. Every wait is bounded by the same limit: the
backend's `DCNBENCH_<NAME>_TIMEOUT` (validated before any work), `--timeout`, or its default.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcnbench.worker.protocol import PROTOCOL_VERSION, ProtocolError, encode, read_message
from dcnbench.worker.settings import check_limit, timeout_override

WORKER_MAIN = Path(__file__).with_name("main.py")
KEEPER_GRACE_S = 10.0  # for the keeper to kill the worker's processes and exit, after SIGTERM
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Every client with a worker running: held here until closed, so no worker outlives dcnbench's
# clean-up because the object that started it was dropped first.
_live: "set[WorkerClient]" = set()


class WorkerError(RuntimeError):
    """A worker died, hung, sent garbage or could not start; the message names the cause."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        return str(self)


class StartError(WorkerError):
    """The worker started but its framework (or the code it loads) did not: `error` is the worker's own line."""

    def __init__(self, message: str, hint: str | None, error: str):
        super().__init__(message, hint)
        self.error = error


class RemoteError(WorkerError):
    """The code in the worker raised; the message is its own, as it would read in this process."""

    def __init__(self, error: str, where: str = "", hint: str | None = None):
        super().__init__(f"{error} (at {where})" if where else error, hint)
        self.error = error


def close_all() -> None:
    """Kill every worker this process started (at exit, and on Ctrl-C)."""
    for client in list(_live):
        client.close()


atexit.register(close_all)


@dataclass(frozen=True)
class WorkerEnv:
    """Where and how a backend's worker runs."""

    name: str  # "paddle": names the venv (.venv-paddle), `make paddle-env`, DCNBENCH_PADDLE_{PYTHON,TIMEOUT}
    framework: Path  # the framework file main.py loads
    label: str = ""  # how messages name it ("MXNet"); the name when empty
    requirements: Path | None = None  # the hashed lock of its own environment; None: dcnbench's interpreter
    distribution: str | None = None  # the package whose metadata says the environment is installed
    pinned: str = ""  # for the fix message: "paddlepaddle==3.3.1, numpy==2.4.6"
    default_timeout_s: float = 300.0
    config: dict = field(default_factory=dict)  # passed to the framework's hello
    extra_env: dict = field(default_factory=dict)
    framework_name: str = ""  # the NAME its framework file declares; the name when empty
    env_vars: bool = True  # whether DCNBENCH_<NAME>_PYTHON and _TIMEOUT apply (not for isolated backends)
    noun: str = ""  # how messages name the worker; "the <label> worker" when empty

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def var(self) -> str:
        return f"DCNBENCH_{re.sub(r'[^A-Z0-9]', '_', self.name.upper())}"

    @property
    def venv(self) -> Path:
        return PROJECT_ROOT / f".venv-{self.name}"

    @property
    def python_version(self) -> str:
        """From the `.python-version` file beside the requirements (the Makefile reads the same file)."""
        pinned = self.requirements.with_name(".python-version") if self.requirements else None
        return pinned.read_text().strip() if pinned and pinned.exists() else "3.11"

    def python(self) -> Path:
        import sys

        override = os.environ.get(f"{self.var}_PYTHON") if self.env_vars else None
        if override:
            return Path(override)
        return self.venv / "bin" / "python" if self.requirements else Path(sys.executable)

    def timeout(self) -> float:
        """The limit on every wait for this worker: --timeout, else $DCNBENCH_<NAME>_TIMEOUT, else the default."""
        if timeout_override() is not None:
            return timeout_override()
        raw = os.environ.get(f"{self.var}_TIMEOUT") if self.env_vars else None
        return self.default_timeout_s if raw is None else check_limit(raw, f"{self.var}_TIMEOUT")

    def check_settings(self) -> None:
        """Refuse a malformed environment variable now, before any work (a usage error)."""
        self.timeout()

    def installed_version(self) -> str | None:
        """The distribution's version from the environment's metadata, without starting anything."""
        if self.distribution is None:
            return None
        want = re.sub(r"[-_.]+", "_", self.distribution).lower()
        for site in self.python().parent.parent.glob("lib/python*/site-packages"):
            for dist in site.glob("*.dist-info"):
                name, _, rest = dist.name.partition("-")
                if re.sub(r"[-_.]+", "_", name).lower() == want:
                    return rest.removesuffix(".dist-info")
        return None

    def fix(self) -> str:
        return f"create it with `make {self.name}-env` ({self.pinned or self.distribution} in .venv-{self.name})"

    def unavailable(self) -> str | None:
        """Why the backend cannot run here (for Backend.unavailable), or None. A `DCNBENCH_<NAME>_PYTHON`
        that points nowhere, or at an interpreter without the framework, is the user's setting at
        fault: the reason names the variable."""
        from dcnbench.backends import Reason

        if self.requirements is None:
            return None
        override = os.environ.get(f"{self.var}_PYTHON") if self.env_vars else None
        if override:
            hint = (f"point {self.var}_PYTHON at the python of an environment with {self.pinned or self.distribution}, "
                    f"or unset it to use .venv-{self.name} (`make {self.name}-env`)")
            if not Path(override).is_file():
                return Reason(f"{self.var}_PYTHON={override} is not a file", hint, setting=True)
            if self.installed_version() is None:
                return Reason(f"{self.var}_PYTHON={override}: that environment has no {self.distribution}", hint,
                              setting=True)
            return None
        if not self.python().exists() or self.installed_version() is None:
            return (f"the {self.display} environment {self.venv} is missing or has no "
                    f"{self.distribution}: {self.fix()}")
        return None


class WorkerClient:
    """One worker process at a time for one environment: started on first use, replaced after a failure."""

    def __init__(self, env: WorkerEnv, threads: int | None = None, timeout_s: float | None = None,
                 python: Path | None = None):
        self.env = env
        self.threads = threads
        self._timeout_s = timeout_s
        self.python = Path(python) if python is not None else env.python()
        self.proc: subprocess.Popen | None = None
        self.hello: dict | None = None
        self._stderr = None
        self.to_release: list[int] = []  # recorded calls whose torch graph is gone

    @property
    def timeout_s(self) -> float:
        """The limit on each request: the one given, else the environment's (read now, so --timeout applies)."""
        return self._timeout_s if self._timeout_s is not None else self.env.timeout()

    @property
    def what(self) -> str:
        return self.env.noun or f"the {self.env.display} worker"

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> dict:
        self.close()
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, **self.env.extra_env)
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(self.threads)  # the same thread count as torch's backends
            env["DCNBENCH_WORKER_THREADS"] = str(self.threads)  # for the framework's own thread API
        # Idle OpenMP threads must sleep, not spin: spinning steals the cores from whichever
        # backend the round-robin times next.
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        import json

        argv = [str(self.python), "-I", str(WORKER_MAIN), str(self.env.framework), json.dumps(self.env.config)]
        try:
            # A session of its own: close() kills the worker with anything it started, and the
            # terminal's Ctrl-C reaches dcnbench only, which then closes its workers.
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                         env=env, start_new_session=True)
        except OSError as exc:
            self.close()
            raise WorkerError(f"cannot start {self.what} with {self.python}: {exc}") from None
        _live.add(self)
        os.set_blocking(self.proc.stdin.fileno(), False)  # _write never blocks past its deadline
        # The environment's limit (--timeout, DCNBENCH_<NAME>_TIMEOUT, its default) bounds every wait,
        # start-up included; a client's own `timeout_s` narrows only its requests (tests of a hang).
        hello, _ = self._read(self.env.timeout(), what="start-up")
        expected = self.env.framework_name or self.env.name
        if hello.get("protocol") != PROTOCOL_VERSION or hello.get("framework") not in (expected, None):
            self.close()
            raise WorkerError(f"{self.what} speaks protocol {hello.get('protocol')} for {hello.get('framework')}, "
                              f"expected {PROTOCOL_VERSION} for {expected}")
        if not hello.get("ok", False):
            self.close()
            raise StartError(f"the {self.env.display} environment is broken: {hello.get('error')}", hello.get("hint"),
                             hello.get("error"))
        self.hello = hello
        return hello

    def close(self) -> None:
        _live.discard(self)
        self.to_release = []  # a new worker holds no recorded calls
        if self.proc is not None:
            # SIGTERM to the keeper (worker/keeper.py): it kills the worker and everything below it,
            # a process that left the session included. Then the process group, for what a worker
            # without a keeper (not Linux) started, while the keeper is not reaped yet, so that the
            # group's id cannot be another process's.
            if self.proc.returncode is None:
                try:
                    self.proc.terminate()
                except ProcessLookupError:
                    pass
                if _exit_status(self.proc.pid, KEEPER_GRACE_S) is None:
                    self.proc.kill()
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream:
                    stream.close()
        self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- requests ------------------------------------------------------------------------
    def request(self, header: dict, arrays: dict | None = None, timeout_s: float | None = None) -> tuple[dict, dict]:
        if self.proc is None:
            self.start()
        if self.to_release:
            header = dict(header, release=self.to_release)
            self.to_release = []
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        self._write(encode(header, arrays), deadline, timeout_s)
        reply, out = self._read(timeout_s, deadline)
        if not reply.get("ok"):
            raise RemoteError(f"{reply.get('error', 'unknown error')}", reply.get("where", ""), reply.get("hint"))
        return reply, out

    def _write(self, data: bytes, deadline: float, timeout_s: float) -> None:
        """Send under the request's deadline: a hung worker stops reading, and a request larger than
        the pipe buffer (64 KiB) would otherwise block here forever."""
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        try:
            while view:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                    self.close()
                    raise WorkerError(f"{self.what} timed out after {timeout_s:g} s (it stopped reading) and was killed",
                                      hint=self._raise_hint())
                try:
                    view = view[os.write(fd, view[:1 << 16]):]
                except BlockingIOError:
                    pass  # less room than asked for: wait again
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None

    def _read(self, timeout_s: float, deadline: float | None = None, what: str = "") -> tuple[dict, dict]:
        fd = self.proc.stdout.fileno()
        deadline = deadline if deadline is not None else time.monotonic() + timeout_s

        def read_exactly(n: int) -> bytes:
            chunks, left = [], n
            while left:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                    raise TimeoutError
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    raise EOFError
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

        # What happened, not what comes next: the run may be ending (a probe, repro's one case), and
        # where it goes on, the next request starts a fresh worker (README, "Failures").
        try:
            return read_message(read_exactly)
        except TimeoutError:
            self.close()
            during = f" during {what}" if what else ""
            raise WorkerError(f"{self.what} timed out after {timeout_s:g} s{during} and was killed",
                              hint=self._raise_hint()) from None
        except EOFError:
            raise self._died() from None
        except ProtocolError as exc:
            self.close()
            raise WorkerError(f"{self.what} sent a malformed reply ({exc}) and was killed") from None

    def _raise_hint(self) -> str:
        return "raise the limit with --timeout" + (f" or {self.env.var}_TIMEOUT" if self.env.env_vars else "")

    def _died(self) -> WorkerError:
        code = _exit_status(self.proc.pid) if self.proc else None  # not reaped: close() kills its group first
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
            tail = f": {lines[-1].strip()}" if lines else ""
        self.close()
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        return WorkerError(f"{self.what} died ({how}){tail}")


def _exit_status(pid: int, timeout_s: float | None = None) -> int | None:
    """How a child ended (a Popen returncode: the exit status, or minus the signal), waiting up to
    `timeout_s` (None: for ever), without reaping it; None if it is still running."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | (os.WNOHANG if deadline else 0))
        except ChildProcessError:  # reaped already
            return None
        if found is not None:
            return found.si_status if found.si_code == os.CLD_EXITED else -found.si_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


class SelfTimed:
    """Samples timed inside a worker, so the pipe and the conversions are outside the figure.

    `client_of()` gives the run's shared client; `header` says what to time (params, device,
    direction, case digest); `arrays` travel once per worker process.
    """

    def __init__(self, client_of, header: dict, arrays: dict | None = None):
        self.client_of = client_of
        self.header = dict(header, cmd="time")
        self.arrays = arrays or {}
        self._sent_to = None  # the worker process that holds the case

    def sample(self) -> float:
        c = self.client_of()
        if c.proc is None:
            c.start()
        first = self._sent_to is not c.proc
        reply, _ = c.request(dict(self.header, setup=first), self.arrays if first else None)
        self._sent_to = c.proc
        return float(reply["ms"])

    def peak_bytes(self) -> tuple[int | None, str]:
        """Peak-RSS growth over one timed call in a fresh worker, like the in-process CPU backends."""
        shared = self.client_of()
        fresh = WorkerClient(shared.env, shared.threads, shared._timeout_s, shared.python)
        try:
            reply, _ = fresh.request(dict(self.header, setup=True, memory=True), self.arrays)
            return reply.get("peak_bytes"), ""
        except WorkerError as exc:
            return None, str(exc)
        finally:
            fresh.close()

"""The manager side of the MXNet worker: start it once, reuse it, restart it after a failure.

Every request has a deadline. A worker that exits or misses its deadline is killed, the request
raises WorkerError naming the cause, and the next request starts a fresh worker, so one bad case
becomes one `error` row and the run goes on.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dcnbench.backends.mxnet.protocol import PROTOCOL_VERSION, encode, read_message

WORKER = Path(__file__).with_name("worker.py")
START_TIMEOUT_S = 120.0


class WorkerError(RuntimeError):
    """The worker died, hung or refused a request."""


class WorkerClient:
    def __init__(self, python: Path, timeout_s: float, threads: int | None = None):
        self.python = python
        self.threads = threads
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.hello: dict | None = None
        self._stderr = None
        self.to_release: list[int] = []  # recorded calls whose torch graph is gone

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> dict:
        self._stderr = tempfile.TemporaryFile()
        try:
            env = dict(os.environ)
            if self.threads:
                env["OMP_NUM_THREADS"] = str(self.threads)  # the same thread count as torch's backends
            # Idle OpenMP threads must sleep, not spin: spinning steals the cores from whichever
            # backend the round-robin times next.
            env["OMP_WAIT_POLICY"] = "PASSIVE"
            self.proc = subprocess.Popen([str(self.python), "-I", str(WORKER)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        except OSError as exc:
            raise WorkerError(f"cannot start the MXNet worker with {self.python}: {exc}") from None
        hello, _ = self._read(START_TIMEOUT_S)
        if hello.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise WorkerError(f"MXNet worker speaks protocol {hello.get('protocol')}, expected {PROTOCOL_VERSION}")
        self.hello = hello
        return hello

    def close(self) -> None:
        self.to_release = []  # a new worker holds no recorded calls
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
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
        try:
            self.proc.stdin.write(encode(header, arrays))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        reply, out = self._read(timeout_s or self.timeout_s)
        if not reply.get("ok"):
            raise WorkerError(f"MXNet: {reply.get('error', 'unknown error')}")
        return reply, out

    def _read(self, timeout_s: float) -> tuple[dict, dict]:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s

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

        try:
            return read_message(read_exactly)
        except TimeoutError:
            self.close()
            raise WorkerError(f"MXNet worker timed out after {timeout_s:.0f} s and was killed; a fresh one starts "
                              "for the next case") from None
        except EOFError:
            raise self._died() from None

    def _died(self) -> WorkerError:
        code = self.proc.wait() if self.proc else None
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
            tail = f": {lines[-1].strip()}" if lines else ""
        self.close()
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        return WorkerError(f"MXNet worker died ({how}){tail}; a fresh one starts for the next case")

"""The worker program: `python -I main.py FRAMEWORK_FILE [CONFIG_JSON]`, run in a backend's own environment.

It imports numpy, the standard library, protocol.py beside it and the one framework file named
on the command line (never dcnbench itself, unless the framework file does, as the torch one in
dcnbench's own environment does). It speaks protocol.py over the stdin/stdout it was started
with: a hello first, then one reply per request. The framework file supplies

    NAME = "paddle"
    def hello(threads: int | None, config: dict) -> dict   # import the framework, apply the thread
                                                           # count; {"versions": {...}, "gpus": n, ...}
    def call(params, arrays, device, record) -> (dict[str, ndarray], handle | None)
    def backward(handle, arrays) -> dict[str, ndarray]     # arrays["cotangent"] -> {"grad_input": ...}; optional
                                                           # (the torch one also takes layouts=, see bridge.pack)
    def time(params, arrays, direction, device) -> (before | None, run)
        # untimed preparation happens in time(); before() runs untimed before every sample (the
        # forward of direction "bwd"); run() is the timed region and returns when the device is done
    def one_line(exc) -> str                               # optional: a framework error in one line
    EXTRA_COMMANDS = ("export",)                           # optional: fw.export(header, arrays) -> (reply, arrays)

Everything else lives here, once for every framework: stdout protection, the loop, recorded calls
and their release, the timer, the peak-RSS measurement, error replies.
"""

import os
import signal
import sys
import time
import traceback
import warnings


def _protect_stdio():
    """The protocol keeps private copies of fd 0 and fd 1; fd 1 then points at stderr and fd 0 at
    /dev/null, so nothing the framework prints (print, C++ printf, a logger) corrupts the stream."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = sys.stderr
    return proto_in, proto_out


def _die_with_parent():
    """A worker never outlives dcnbench: Ctrl-C is the parent's to handle (it kills its workers),
    and if the parent (the keeper, keeper.py) dies without doing so, Linux sends this process SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own clean-up has to do
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I drops the script's directory
from keeper import contain  # noqa: E402

contain()  # from here on, this is the worker; its parent keeps everything it starts from outliving it
PROTO_IN, PROTO_OUT = _protect_stdio()
_die_with_parent()

import numpy as np  # noqa: E402, F401  (the framework's arrays)

from protocol import PROTOCOL_VERSION, encode, read_message  # noqa: E402

KEEP_CALLS = 1024  # recorded calls kept when the client never releases them
WARM_BELOW_MS = 50.0  # samples shorter than this get an untimed call first (Worker.time)
COMMANDS = ("forward", "backward", "time", "release", "sleep", "crash")


def _read_exactly(n):
    chunks, left = [], n
    while left:
        chunk = PROTO_IN.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(header, arrays=None):
    PROTO_OUT.write(encode(header, arrays))


def _status_kib(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # the peak RSS (VmHWM) restarts from the current RSS
        return _status_kib("VmRSS")
    except OSError:
        return None


def _load(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dcnbench_worker_framework", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Worker:
    def __init__(self, fw):
        self.fw = fw
        self.calls = {}
        self.timed = None  # (case key, before, run): one case at a time
        self.last_ms = None  # the last timed sample

    def forward(self, header, arrays):
        outputs, handle = self.fw.call(header["params"], arrays, header["device"], header["record"])
        if header["record"] and handle is not None:
            self.calls[header["call"]] = handle
            while len(self.calls) > KEEP_CALLS:
                self.calls.pop(next(iter(self.calls)))
        return {}, outputs

    def backward(self, header, arrays):
        if not hasattr(self.fw, "backward"):
            raise RuntimeError(f"{self.fw.NAME} has no backward")
        if header["call"] not in self.calls:
            raise RuntimeError(f"no recorded call {header['call']} (only the last {KEEP_CALLS} are kept)")
        layouts = {"layouts": header["layouts"]} if "layouts" in header else {}  # exact (torch) calls only
        return {}, self.fw.backward(self.calls[header["call"]], arrays, **layouts)

    def time(self, header, arrays):
        """One timed sample (ms) of the case `header["case"]`; its data comes once, later samples reuse it."""
        key = header["case"]
        if arrays or header.get("setup"):
            self.timed, self.last_ms = None, None
            before, run = self.fw.time(header["params"], arrays, header["direction"], header["device"])
            self.timed = (key, before, run)
        if self.timed is None or self.timed[0] != key:
            raise RuntimeError(f"case {key} was never sent to this worker")
        _, before, run = self.timed
        if not header.get("memory") and (self.last_ms is None or self.last_ms < WARM_BELOW_MS):
            # An untimed call first: this process slept while waiting for the request, and the first
            # call after a sleep is slower (0.65 ms against 0.37 ms for a 0.3 ms kernel, measured), a
            # cost dcnbench's own process, which never sleeps between samples, does not pay. Beyond
            # WARM_BELOW_MS that cost is under 1 % of a sample: no second call.
            if before is not None:
                before()
            run()
        if before is not None:
            before()
        base = _reset_peak_rss() if header.get("memory") else None
        start = time.perf_counter()
        run()
        reply = {"ms": (time.perf_counter() - start) * 1e3}
        self.last_ms = reply["ms"]
        if header.get("memory"):
            peak = _status_kib("VmHWM")
            reply["peak_bytes"] = None if peak is None or base is None else max(0, peak - base) * 1024
        return reply, {}

    def release(self, header, arrays):
        self.calls.pop(header.get("call"), None)
        return {}, {}

    def sleep(self, header, arrays):  # tests: a hung worker
        time.sleep(header["seconds"])
        return {}, {}

    def crash(self, header, arrays):  # tests: a worker that dies mid-request
        if header.get("signal"):
            os.kill(os.getpid(), getattr(signal, header["signal"]))
        os._exit(header.get("status", 3))


def _where(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""


def _one_line(fw, exc):
    if fw is not None and hasattr(fw, "one_line"):
        try:
            return fw.one_line(exc)
        except Exception:
            pass
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _failure(fw, exc):
    return {"ok": False, "error": _one_line(fw, exc), "error_type": type(exc).__name__, "where": _where(exc),
            "hint": getattr(exc, "hint", None)}


def main():
    # -I ignores PYTHONWARNINGS: import-time warnings (paddle's "No ccache found") are silenced
    # here, so the last stderr line a crash report quotes is the crash's own.
    warnings.filterwarnings("ignore")
    threads = int(os.environ["DCNBENCH_WORKER_THREADS"]) if os.environ.get("DCNBENCH_WORKER_THREADS") else None
    import json

    config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    fw = None
    try:
        fw = _load(sys.argv[1])
        info = fw.hello(threads, config)
    except BaseException as exc:  # the environment is broken (or the code it loads): say so, then leave
        _send(dict(_failure(fw, exc), protocol=PROTOCOL_VERSION, framework=getattr(fw, "NAME", None)))
        return
    versions = info.get("versions", {})
    _send(dict(info, **versions, protocol=PROTOCOL_VERSION, framework=fw.NAME, ok=True, pid=os.getpid(),
               backward=hasattr(fw, "backward")))
    worker = Worker(fw)
    extra = tuple(getattr(fw, "EXTRA_COMMANDS", ()))
    while True:
        try:
            header, arrays = read_message(_read_exactly)
        except EOFError:
            return
        for call in header.get("release", []):
            worker.calls.pop(call, None)
        cmd = header.get("cmd")
        if cmd == "exit":
            return
        try:
            if cmd in COMMANDS:
                reply, out = getattr(worker, cmd)(header, arrays)
            elif cmd in extra:
                reply, out = getattr(fw, cmd)(header, arrays)
            else:
                raise RuntimeError(f"unknown command {cmd!r}")
            _send(dict(reply, ok=True), out)
        except Exception as exc:  # report and keep serving: one bad request is not a dead worker
            _send(_failure(fw, exc))
        except SystemExit as exc:  # the framework's code called sys.exit(): that ends this worker
            sys.stderr.write(f"the code in this worker called sys.exit({exc.code!r})\n")
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1)


if __name__ == "__main__":
    main()

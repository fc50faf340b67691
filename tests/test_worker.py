"""The worker mechanism (dcnbench/worker/) with real processes: a malformed reply, a worker that
never says hello, one that stops reading, one that prints on fd 1, a parent that dies, and every
limit an environment variable sets, checked before any work."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dcnbench.worker import client as worker_client
from dcnbench.worker.client import WorkerClient, WorkerEnv, WorkerError
from dcnbench.worker.protocol import ProtocolError, read_message
from dcnbench.checking.verify import default_suite
from tests.conftest import invoke, run_cli, running


def alive(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (a test's own temporary path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def fake_python(tmp_path: Path, body: str) -> Path:
    """An "interpreter" for DCNBENCH_MXNET_PYTHON: a shell script, beside metadata that says mxnet is installed."""
    (tmp_path / "lib" / "python3.11" / "site-packages" / "mxnet-1.9.1.dist-info").mkdir(parents=True)
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\n" + body + "\n")
    python.chmod(0o755)
    return python


def framework(tmp_path: Path, body: str) -> WorkerEnv:
    """A framework file run by dcnbench's own interpreter."""
    path = tmp_path / "fw.py"
    path.write_text(textwrap.dedent(body))
    return WorkerEnv(name="testfw", framework=path, env_vars=False, default_timeout_s=60)


def reader(blob: bytes):
    at = [0]

    def read_exactly(n):
        if at[0] + n > len(blob):
            raise EOFError
        at[0] += n
        return blob[at[0] - n:at[0]]

    return read_exactly


def message(header: bytes, payload: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "big") + header + payload


@pytest.mark.parametrize("blob, text", [
    (message(b"hello"), "not JSON"),
    (message(b"[]"), "JSON list"),
    (b"\xff" * 8, "header length"),
    (message(b'{"arrays": [["a", "many"]]}'), "malformed array list"),
    (message(b'{"arrays": [["a", 4]]}', b"junk"), "not .npy"),
])
def test_bytes_that_are_not_a_message_raise_protocol_error(blob, text):
    with pytest.raises(ProtocolError, match=text):
        read_message(reader(blob))


def test_a_reply_without_json_is_a_worker_error_and_the_worker_is_killed(tmp_path):
    python = fake_python(tmp_path, r"printf '\000\000\000\000\000\000\000\005hello'; exec sleep 60")
    env = WorkerEnv(name="mxnet", framework=Path("unused.py"), requirements=Path("unused.txt"), default_timeout_s=30)
    client = WorkerClient(env, python=python)
    with pytest.raises(WorkerError, match=r"sent a malformed reply \(a header that is not JSON: b'hello'\) and was killed"):
        client.start()
    assert not client.alive and not alive(str(tmp_path))


def test_the_timeout_variable_bounds_start_up_and_a_bad_reply_is_one_line(tmp_path):
    # DCNBENCH_MXNET_TIMEOUT names the MXNet worker's limit: its start-up waits no longer (it waited 120 s).
    python = fake_python(tmp_path, "exec sleep 600")
    start = time.monotonic()
    res = run_cli("verify", "--backend", "mxnet", "--case", "v1/float64",
                  env_extra={"DCNBENCH_MXNET_PYTHON": str(python), "DCNBENCH_MXNET_TIMEOUT": "2"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "timed out after 2 s during start-up" in res.stderr and time.monotonic() - start < 90
    assert not alive(str(tmp_path))


@pytest.mark.parametrize("variable, value", [("DCNBENCH_MXNET_TIMEOUT", "abc"), ("DCNBENCH_MXNET_TIMEOUT", "nan"),
                                             ("DCNBENCH_MXNET_TIMEOUT", "inf"), ("DCNBENCH_MXNET_TIMEOUT", "-5"),
                                             ("DCNBENCH_MXNET_TIMEOUT", "0"), ("DCNBENCH_PADDLE_TIMEOUT", "1e300")])
def test_a_malformed_limit_variable_is_a_usage_error_before_any_work(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    res = invoke("verify", "--backend", "pytorch", "--case", "v2/float64", "--csv", os.devnull, "--json", os.devnull)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and f"{variable}={value}" in errors[0], res.stderr
    assert "hint:" in res.stderr and "Traceback" not in res.stderr and "wrote" not in res.stdout


@pytest.mark.parametrize("args, text", [(["--timeout", "nan"], "--timeout=nan"), (["--timeout", "0"], "--timeout=0"),
                                        (["--isolate", "--in-process"], "contradict")])
def test_bad_isolation_options_are_usage_errors(args, text):
    res = invoke("verify", "--backend", "pytorch", "--case", "v2/float64", *args)
    assert res.returncode == 2 and text in res.stderr


def test_a_framework_printing_on_fd_1_cannot_corrupt_the_stream(tmp_path):
    env = framework(tmp_path, """
        import ctypes, os
        NAME = "testfw"
        print("noise: print on import")
        os.write(1, b"noise: os.write(1) on import\\n")

        def hello(threads, config):
            ctypes.CDLL(None).printf(b"noise: printf in hello\\n")
            return {"versions": {"testfw": "1"}}

        def call(params, arrays, device, record):
            print("noise in call")
            os.write(1, b"\\0\\0\\0\\0\\0\\0\\0\\5hello")  # bytes that look like a message
            ctypes.CDLL(None).fflush(None)
            return {"output": arrays["input"] * 2}, None
    """)
    client = WorkerClient(env)
    try:
        _, out = client.request({"cmd": "forward", "params": {}, "device": "cpu", "record": False, "call": 0},
                                {"input": np.arange(4.0)})
        assert np.array_equal(out["output"], np.arange(4.0) * 2) and client.hello["testfw"] == "1"
    finally:
        client.close()


def test_a_worker_that_stops_reading_times_out_on_the_write(tmp_path):
    env = framework(tmp_path, """
        NAME = "testfw"
        def hello(threads, config):
            return {}
    """)
    client = WorkerClient(env, timeout_s=1.0)
    try:
        client.start()
        os.kill(client.hello["pid"], signal.SIGSTOP)  # alive, but reads nothing: a 10 MB request fills the pipe
        start = time.monotonic()
        with pytest.raises(WorkerError, match="timed out after 1 s"):
            client.request({"cmd": "sleep", "seconds": 0}, {"a": np.zeros(10 ** 7 // 8)})
        assert time.monotonic() - start < 20 and not client.alive
    finally:
        client.close()


def test_a_worker_dies_with_its_parent(tmp_path):
    # The parent is killed with SIGKILL (no clean-up runs) while its worker is busy (so it never
    # sees its stdin close): the worker must not outlive it.
    fw = tmp_path / "fw.py"
    fw.write_text("NAME = 'testfw'\ndef hello(threads, config):\n    return {}\n")
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dcnbench.worker.client import WorkerClient, WorkerEnv
        from dcnbench.worker.protocol import encode
        c = WorkerClient(WorkerEnv(name="testfw", framework=Path({str(fw)!r}), env_vars=False))
        c.start()
        c.proc.stdin.write(encode({{"cmd": "sleep", "seconds": 600}}))
        c.proc.stdin.flush()
        print(c.proc.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert worker in alive(str(tmp_path))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while alive(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(str(tmp_path))
    finally:
        parent.kill()


def test_close_all_kills_every_worker(tmp_path):
    env = framework(tmp_path, "NAME = 'testfw'\ndef hello(threads, config):\n    return {}\n")
    clients = [WorkerClient(env) for _ in range(2)]
    for c in clients:
        c.start()
    assert len(alive(str(tmp_path))) == 4  # each worker and its keeper (worker/keeper.py)
    worker_client.close_all()
    assert not alive(str(tmp_path)) and not any(c.alive for c in clients)


def test_nonfinite_trans_never_reaches_mxnet():
    # MXNet's DeformablePSROIPooling turns a NaN coordinate into memory indices (its worker died
    # with SIGSEGV): dcnbench refuses the call before sending it, and the worker lives on.
    import dcnbench.backends.mxnet as mxb
    from dcnbench.ops import get

    assert mxb.check() is None
    case = next(c for c in get("deform_psroi_pool").suite(0) if c.dtype == "float64" and not c.no_offset)
    inputs = case.inputs()
    client = mxb.client()
    if client.proc is None:  # an earlier test closed every worker; the next request would start one
        client.start()
    pid = client.proc.pid
    for bad in ("offset", "rois"):
        spoiled = dict(inputs, **{bad: inputs[bad].clone()})
        spoiled[bad].view(-1)[-1] = float("nan")
        with pytest.raises(ValueError, match="NaN or infinity"):
            case.call(mxb.deform_psroi_pool, spoiled)
    assert mxb.client().alive and mxb.client().proc.pid == pid


ESCAPES = Path(__file__).parent / "plugins" / "escapes.py"


def test_a_process_that_leaves_the_session_still_dies_with_its_worker(tmp_path, monkeypatch):
    # A plugin's child started with start_new_session=True (setsid) has a process group of its own:
    # killing the worker's group missed it, and it ran on under init. The worker's keeper (a child
    # subreaper, worker/keeper.py) now kills it, whether the run ends or the plugin crashes.
    pids = tmp_path / "pids"
    monkeypatch.setenv("DCNBENCH_TEST_ESCAPE_PIDS", str(pids))
    # The control: without a keeper, the setsid child outlives the process that started it.
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ESCAPES.parent)!r}); "
                    "import escapes; escapes._escape()"], check=True)
    (control,) = map(int, pids.read_text().split())
    try:
        assert running(control)
    finally:
        os.kill(control, signal.SIGKILL)
    pids.unlink()
    from dcnbench.plugins import load_plugin
    from dcnbench.worker import isolation

    case = next(c for c in default_suite(op_names=["deform_conv2d"]) if c.case_id == "v2/float64")
    for plugin in ("escapes", "escapes_and_crashes"):
        backend = load_plugin(f"{ESCAPES}:{plugin}", isolate=True)  # its float32 probe starts the child
        (child,) = map(int, pids.read_text().split())
        assert running(child)
        if plugin == "escapes":
            isolation.close(backend)  # the run ends
        else:
            with pytest.raises(WorkerError, match="killed by SIGSEGV"):
                case.call(backend.ops["deform_conv2d"], case.inputs())
        assert not running(child), plugin
        pids.unlink()

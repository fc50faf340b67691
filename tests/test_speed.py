import pytest

OP_DEFORM_CONV2D = "deform_conv2d"
from dcnbench.backends import Backend, get
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.timing.measure import Timer
from dcnbench.ops.deform_conv2d.contract import parse_shape

SMALL = parse_shape("2,8,12,12:8,3,3")


class StepClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _backend(name, fn, dtypes=("float32",)):
    return Backend(name=name, description="", ops={OP_DEFORM_CONV2D: fn}, dtypes={"cpu": dtypes})


def _costing(log, clock, name, seconds):
    inner = get("conv2d").ops[OP_DEFORM_CONV2D]

    def fn(*args, **kwargs):
        log.append(name)
        clock.now += seconds
        return inner(*args, **kwargs)

    return fn


def test_round_robin_ratios_and_flops():
    clock, log = StepClock(), []
    a = _backend("a", _costing(log, clock, "a", 0.004))
    b = _backend("b", _costing(log, clock, "b", 0.001))
    results = run_speed(backends=[a, b], cases=[SpeedCase(SMALL, direction="fwd")], repeat=4, warmup_s=0,
                        baseline="b", measure_memory=False, timer=Timer("cpu", clock=clock))
    # Warm-up once each, then strictly alternating samples.
    assert log == ["a", "b"] + ["a", "b"] * 4
    ra, rb = results
    assert ra.measurement.median_ms == pytest.approx(4.0) and rb.measurement.median_ms == pytest.approx(1.0)
    assert ra.ratio_to_baseline == pytest.approx(4.0) and rb.ratio_to_baseline == pytest.approx(1.0)
    assert rb.gflops == pytest.approx(SMALL.conv_flops() / 1e-3 / 1e9)


def test_failing_backend_is_an_error_row_and_others_still_run():
    def boom(*args, **kwargs):
        raise RuntimeError("no kernel today")

    results = run_speed(backends=[_backend("bad", boom), get("pytorch"), get("conv2d")],
                        cases=[SpeedCase(SMALL, dtype="float32")], repeat=2, warmup_s=0, measure_memory=False)
    assert [r.status for r in results] == ["error", "ok", "ok"]
    assert "no kernel today" in results[0].message
    assert results[2].ratio_to_baseline == pytest.approx(1.0)


def test_unsupported_dtype_row():
    [r] = run_speed(backends=[get("torchvision")], cases=[SpeedCase(SMALL, dtype="bfloat16")], repeat=1,
                    warmup_s=0, baseline=None, measure_memory=False)
    assert r.status == "unsupported" and "bfloat16" in r.message


@pytest.mark.parametrize("direction", ["fwd", "bwd", "fwdbwd"])
def test_directions_run(direction):
    [r] = run_speed(backends=[get("pytorch")], cases=[SpeedCase(SMALL, direction=direction)], repeat=2, warmup_s=0,
                    baseline="pytorch", measure_memory=False)
    assert r.status == "ok" and len(r.measurement.samples_ms) == 2

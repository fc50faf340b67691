import pytest

from dcnbench.timing.measure import Measurement, Timer


class FakeClock:
    """Advances by a fixed step each time a timed function runs."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_timer_uses_the_clock_seam():
    clock = FakeClock()
    timer = Timer("cpu", clock=clock)

    def work():
        clock.now += 0.25

    assert timer.once(work) == pytest.approx(250.0)
    setup_calls = []
    assert timer.once(work, setup=lambda: setup_calls.append(clock.now)) == pytest.approx(250.0)
    assert len(setup_calls) == 1


def test_warmup_runs_until_the_time_is_spent():
    clock = FakeClock()

    def work():
        clock.now += 0.1

    assert Timer("cpu", clock=clock).warmup(work, 0.95) == 10
    assert Timer("cpu", clock=clock).warmup(work, 0.0) == 1


def test_measurement_statistics():
    m = Measurement((10.0, 12.0, 11.0, 13.0, 14.0))
    assert m.median_ms == 12.0 and m.min_ms == 10.0
    assert m.iqr_ms == pytest.approx(2.0)
    assert m.spread == pytest.approx(2.0 / 12.0)


def test_noise_warning_names_a_remedy():
    quiet = Measurement((10.0, 10.1, 10.0, 9.9, 10.0, 10.05))
    noisy = Measurement((10.0, 14.0, 8.0, 12.0, 9.0, 15.0))
    assert quiet.warnings() == []
    [warning] = noisy.warnings()
    assert "IQR" in warning and "--repeat" in warning
    assert any("samples" in w for w in Measurement((1.0, 1.0)).warnings())

"""`dcnbench train`: training parity against float64, its bound, the planted stateful bugs it must
catch at the step they first act, the digits, the net and the scaled-digits experiment."""

import json
import math
import textwrap

import pytest
import torch

from dcnbench.results import load_json
from dcnbench.train import data, experiment, model, parity
from tests.conftest import ROOT, invoke

STATEFUL = ROOT / "tests" / "plugins" / "planted_stateful_bugs.py"
STEPS, BATCH = 5, 4


def _plugin_that_fails_at_call(tmp_path, call: int):
    path = tmp_path / "breaks.py"
    path.write_text(textwrap.dedent(f"""
        from torchvision.ops import deform_conv2d as tv
        calls = {{}}
        def breaks(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
            key = tuple(input.shape)
            calls[key] = calls.get(key, 0) + 1
            if calls[key] == {call}:
                raise RuntimeError("kernel lost its workspace")
            return tv(input, offset, weight, bias, stride, padding, dilation, mask)
    """))
    return path


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory):
    """One run: correct backends (MXNet's DCNv1 through its worker), both planted bugs and a kernel
    that raises at its 4th call of the training shape. The plugins run in this process to save three
    worker start-ups; MXNet shows training through a worker (and the done-when runs use the default)."""
    tmp = tmp_path_factory.mktemp("train")
    breaks = _plugin_that_fails_at_call(tmp, 4)
    out = invoke("train", "--backend", "ext", "--backend", "mxnet", "--dcn", "v1",
                 "--impl", f"{STATEFUL}:cached_sampling_positions", "--impl", f"{STATEFUL}:tuned_after_warmup",
                 "--impl", f"{breaks}:breaks", "--in-process", "--steps", str(STEPS), "--batch", str(BATCH),
                 "--json", str(tmp / "train.json"), "--csv", str(tmp / "train.csv"))
    doc = load_json(tmp / "train.json", kinds=("train",))
    return out, doc, tmp


def _rows(doc, role="backend"):
    return {r["backend"]: r for r in doc["records"] if r["role"] == role}


def test_correct_backends_stay_within_the_bound_mxnet_by_its_own_border_rule(parity_run):
    _, doc, _ = parity_run
    rows = _rows(doc)
    for name in ("ext", "mxnet"):
        assert rows[name]["status"] == "pass", rows[name]["message"]
        assert len(rows[name]["losses"]) == STEPS
        assert all(d <= b for d, b in zip(rows[name]["loss_diff"], rows[name]["loss_bound"]))
    assert rows["mxnet"]["rule"] == "C" and rows["ext"]["rule"] == "Z"
    # The oracle ran by both rules, at float64 (reference) and float32 (yardstick); the rules give different runs.
    oracle = [(r["role"], r["rule"]) for r in doc["records"] if r["role"] != "backend"]
    assert sorted(oracle) == [("reference", "C"), ("reference", "Z"), ("yardstick", "C"), ("yardstick", "Z")]
    refs = {r["rule"]: r["losses"] for r in doc["records"] if r["role"] == "reference"}
    assert refs["C"] != refs["Z"]


@pytest.mark.parametrize("bug", ["cached_sampling_positions", "tuned_after_warmup"])
def test_planted_stateful_bugs_fail_at_the_step_they_first_act(parity_run, bug):
    from tests.plugins.planted_stateful_bugs import FIRST_WRONG_STEP

    out, doc, _ = parity_run
    row = _rows(doc)[bug]
    step = FIRST_WRONG_STEP[bug]
    assert row["status"] == "fail" and row["first_failing_step"] == step
    assert f"fail {bug}: diverged from the float64 reference at step {step}:" in out.stdout
    # Every step before it is within the bound: the bug is invisible until its state is used.
    assert all(d <= b for d, b in zip(row["loss_diff"][:step - 1], row["loss_bound"][:step - 1]))


def test_a_kernel_that_raises_is_an_error_row_and_the_run_goes_on(parity_run):
    out, doc, _ = parity_run
    row = _rows(doc)["breaks"]
    assert row["status"] == "error" and "step 4: " in row["message"] and "kernel lost its workspace" in row["message"]
    assert len(row["losses"]) == 3
    assert out.returncode == 1
    assert _rows(doc)["ext"]["status"] == "pass"  # rows after it still ran


def test_results_files_and_the_report_draw_the_loss_curves(parity_run):
    _, doc, tmp = parity_run
    assert doc["settings"]["bound_factor"] == parity.BOUND_FACTOR and doc["partial"] is False
    csv_lines = (tmp / "train.csv").read_text().splitlines()
    assert csv_lines[0].startswith("schema_version,kind,backend,role")
    assert sum(",ext,backend," in line for line in csv_lines) == STEPS
    out = invoke("report", str(tmp / "train.json"), "--out", str(tmp / "report"))
    assert out.returncode == 0, out.stderr
    md = (tmp / "report" / "report.md").read_text()
    assert "## Training parity" in md and "train-loss-1.png" in md
    assert (tmp / "report" / "plots" / "train-loss-1.png").read_bytes()[:4] == b"\x89PNG"


def test_step_times_are_measured_per_phase(parity_run):
    _, doc, _ = parity_run
    ext = _rows(doc)["ext"]
    assert all(ext[k] is not None and ext[k] > 0 for k in ("forward_ms", "backward_ms", "optimizer_ms"))
    assert ext["step_ms"] == pytest.approx(ext["forward_ms"] + ext["backward_ms"] + ext["optimizer_ms"])


def test_a_backend_that_cannot_train_the_variant_is_unsupported_not_failed():
    found = parity.run_parity(backends=[_get("mxnet")], settings=parity.TrainSettings(dcn="v2", steps=2, batch=4))
    assert [(r.status, r.role) for r in found] == [("unsupported", "backend")]
    assert "GPU only" in found[0].message


def _get(name):
    from dcnbench.backends import get

    return get(name)


# ---- the bound ----------------------------------------------------------------------------------


def test_bound_is_the_running_largest_yardstick_drift_with_an_epsilon_floor():
    reference = parity.Trajectory(losses=(2.0, 1.0, 1.0, 1.0), weights=())
    yardstick = parity.Drift(loss=(1e-9, 3e-6, 1e-9, 5e-6), weights=(0.0, 2e-6, 0.0, 1e-6))
    b = parity.bounds(yardstick, reference, factor=4.0)
    eps = parity.EPS32
    assert b.loss == pytest.approx((4 * 2 * eps, 4 * 3e-6, 4 * 3e-6, 4 * 5e-6))
    assert b.weights == pytest.approx((4 * eps, 4 * 2e-6, 4 * 2e-6, 4 * 2e-6))


def test_first_divergence_names_the_first_step_out_of_bound_and_nan_counts():
    bound = parity.Drift(loss=(1.0, 1.0, 1.0), weights=(1.0, 1.0, 1.0))
    assert parity.first_divergence(parity.Drift((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), bound) is None
    assert parity.first_divergence(parity.Drift((0.5, 0.5, 2.0), (0.5, 3.0, 0.5)), bound)[0] == 2
    assert parity.first_divergence(parity.Drift((math.nan, 0.5, 0.5), (0.5, 0.5, 0.5)), bound)[0] == 1


# ---- data and net -------------------------------------------------------------------------------


def test_digits_ship_with_scikit_learn_and_are_framed_like_mnist():
    digits = data.load()
    assert tuple(digits.images.shape) == (1797, 1, 28, 28) and set(digits.labels.tolist()) == set(range(10))
    assert float(digits.images[..., :4, :].abs().max()) == 0.0  # the 4-pixel margin is empty
    parts = data.split(digits, 0)
    assert len(parts.train) + len(parts.test) == 1797


def test_rescale_is_the_identity_at_zoom_one_and_shrinks_the_digit_by_the_zoom():
    images = data.split(data.load(), 0).test.images[:20]
    n = len(images)
    same = data.rescale(images, torch.ones(n, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64))
    assert torch.allclose(same, images, atol=1e-12)
    zoom = torch.full((n,), 2.0, dtype=torch.float64)
    small = data.rescale(images, zoom, torch.zeros(n, 2, dtype=torch.float64))
    # Half the size in each direction: a quarter of the ink, within the resampling's blur.
    ratio = small.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert torch.allclose(ratio, torch.full_like(ratio, 0.25), rtol=0.05)


def test_the_scaled_set_depends_on_the_seed_only():
    test = data.split(data.load(), 0).test
    assert torch.equal(data.scaled(test, 3).images, data.scaled(test, 3).images)
    assert not torch.equal(data.scaled(test, 3).images, data.scaled(test, 4).images)


def test_batches_are_the_same_for_the_same_seed_and_cover_an_epoch_once():
    train = data.split(data.load(), 0).train
    first = [b.labels for b in data.batches(train, batch=100, steps=11, seed=1)]
    again = [b.labels for b in data.batches(train, batch=100, steps=11, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == 11
    images = torch.cat([b.images for b in data.batches(train, batch=100, steps=len(train) // 100, seed=1)])
    assert len(torch.unique(images.flatten(1), dim=0)) == len(images)  # no digit twice in an epoch


@pytest.mark.parametrize("dcn", ["v1", "v2"])
def test_deformable_net_with_zero_offsets_and_unit_masks_is_the_plain_net(dcn):
    """Zero offsets make a deformable layer a conv2d (a DCNv2 mask of 1 too): the net's wiring
    (offset layout, padding, weights by name) is checked against torch's own conv2d."""
    config = model.NetConfig(deformable=True, dcn=dcn, jitter=0.0)
    deform = model.build(config, op=parity_oracle(), seed=0, dtype=torch.float64)
    for layer in deform.deformable_layers():
        torch.nn.init.zeros_(layer.offset.weight)
        torch.nn.init.zeros_(layer.offset.bias)
        if dcn == "v2":
            torch.nn.init.constant_(layer.offset.bias[18:], 50.0)  # sigmoid(50) = 1 in float64
    plain = model.build(model.NetConfig(deformable=False), op=None, seed=0, dtype=torch.float64)
    x = data.load().images[:6]
    assert torch.allclose(deform(x), plain(x), rtol=1e-12, atol=1e-12)


def parity_oracle():
    from dcnbench import ops

    return ops.get(parity.OP).oracle


def test_every_backend_starts_from_the_same_weights():
    a = model.flat_weights(model.build(parity.TrainSettings().net(), op=parity_oracle(), seed=5, dtype=torch.float64))
    b = model.flat_weights(model.build(parity.TrainSettings().net(), op=parity_oracle(), seed=5, dtype=torch.float32))
    assert torch.allclose(a, b, rtol=2 ** -24, atol=0) and not torch.equal(a, model.flat_weights(
        model.build(parity.TrainSettings().net(), op=parity_oracle(), seed=6, dtype=torch.float64)))


# ---- the experiment -----------------------------------------------------------------------------


def test_zero_offsets_sample_the_regular_receptive_field():
    net = model.build(model.NetConfig(deformable=True, jitter=0.0), op=parity_oracle(), seed=0, dtype=torch.float64)
    image = data.load().images[0]
    points = experiment.sampling_points(net, image, (3, 3), learned=False)
    # Unit (3, 3) of the 7x7 map sits at pixel 13.5 of the 28x28 image; two stacked 3x3 layers on
    # maps pooled by 2 and 4 reach pixels 13.5 + 4*a + 2*b for a, b in {-1, 0, 1}.
    expected = sorted({13.5 + 4 * a + 2 * b for a in (-1, 0, 1) for b in (-1, 0, 1)})
    assert sorted(set(points[:, 0].tolist())) == expected and sorted(set(points[:, 1].tolist())) == expected


def test_scaled_digits_experiment_prints_the_table_beside_the_seeds_and_writes_the_figure(tmp_path, monkeypatch):
    few = data.load().take(torch.arange(300))  # 200 training and 100 test digits: the path, not the accuracy
    monkeypatch.setattr(data, "load", lambda: few)
    out = invoke("train", "--experiment", "scaled-digits", "--backend", "ext", "--epochs", "1",
                 "--finetune-epochs", "1", "--batch", "100", "--out", str(tmp_path / "exp"))
    assert out.returncode == 0, out.stderr
    assert "98.74 %" in out.stdout and "92.55 %" in out.stdout and "scaled digits" in out.stdout
    record = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert set(record["accuracy"]) == {"plain", "deformable", "finetuned"} and record["settings"]["seed"] == 0
    assert all(0 <= v <= 1 for acc in record["accuracy"].values() for v in acc.values())
    assert (tmp_path / "exp" / "offset-fields.png").read_bytes()[:4] == b"\x89PNG"
    assert "| scaled digits |" in (tmp_path / "exp" / "table.md").read_text()


# ---- usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--dcn", "v3"], "unknown --dcn 'v3'"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--batch", "1"], "--batch 1 is out of range"),
    (["--experiment", "rotated"], "unknown --experiment 'rotated'"),
    (["--experiment", "scaled-digits", "-b", "ext", "-b", "torchvision"], "--experiment trains with one deformable kernel"),
    (["--backend", "nope"], "unknown backend 'nope'"),
])
def test_usage_errors_are_exit_2_with_a_hint(args, message):
    out = invoke("train", *args)
    assert out.returncode == 2
    assert f"error: {message}" in out.stderr and "hint:" in out.stderr

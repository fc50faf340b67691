"""`dcnbench train`: training parity against float64, its bound, the planted stateful bugs it must
catch at the step they first act, the digits, the net and the scaled-digits experiment."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch

from dcnbench.results import load_json
from dcnbench.train import data, experiment, model, offsets, parity
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


@pytest.mark.parametrize("key, value", [("losses", [2.3, "2.2"]), ("loss_diff", [-1.0]), ("step_ms", "fast")])
def test_a_damaged_train_file_is_refused_with_exit_2(parity_run, key, value):
    _, doc, tmp = parity_run
    damaged = json.loads((tmp / "train.json").read_text())
    damaged["records"][0][key] = value
    path = tmp / f"damaged-{key}.json"
    path.write_text(json.dumps(damaged))
    out = invoke("report", str(path), "--out", str(tmp / f"report-{key}"))
    assert out.returncode == 2
    assert "is damaged: train record 0" in out.stderr and key in out.stderr and "hint:" in out.stderr


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


def _rows_and_cols_with_ink(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's ink centroid (y, x) in pixels."""
    ink = images[:, 0]
    total = ink.sum(dim=(1, 2))
    ys = torch.arange(ink.shape[1], dtype=ink.dtype)
    return (ink.sum(dim=2) * ys).sum(dim=1) / total, (ink.sum(dim=1) * ys).sum(dim=1) / total


def test_rescale_is_the_identity_at_zoom_one_and_shrinks_each_axis_by_its_zoom():
    images = data.split(data.load(), 0).test.images[:20]
    n = len(images)
    none = torch.zeros(n, 2, dtype=torch.float64)
    same = data.rescale(images, torch.ones(n, 2, dtype=torch.float64), none)
    assert torch.allclose(same, images, atol=1e-12)
    # Half the size in each direction: a quarter of the ink; along one axis only: half (Keras
    # draws one factor per axis), within the resampling's blur.
    for zoom, share in (((2.0, 2.0), 0.25), ((2.0, 1.0), 0.5), ((1.0, 2.0), 0.5)):
        small = data.rescale(images, torch.tensor([zoom] * n, dtype=torch.float64), none)
        ratio = small.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
        assert torch.allclose(ratio, torch.full_like(ratio, share), rtol=0.05), zoom
    # The y zoom shrinks the rows: the ink's height halves, not its width.
    tall = data.rescale(images, torch.tensor([(2.0, 1.0)] * n, dtype=torch.float64), none)
    rows = (tall[:, 0].sum(dim=2) > 0.05).sum(dim=1).double()
    cols = (tall[:, 0].sum(dim=1) > 0.05).sum(dim=1).double()
    assert float(rows.mean()) < 0.7 * float(cols.mean())


def test_the_shift_is_in_the_input_frame_so_the_digit_moves_by_shift_over_zoom():
    """Keras applies the shift before the zoom: a shift of 0.1 frame at zoom 2 moves the digit 0.05
    frame (1.4 pixels), not 0.1 (a shift applied after the zoom) nor 0.2."""
    images = data.split(data.load(), 0).test.images[:20]
    n = len(images)
    zoom = torch.full((n, 2), 2.0, dtype=torch.float64)
    still = _rows_and_cols_with_ink(data.rescale(images, zoom, torch.zeros(n, 2, dtype=torch.float64)))
    moved = _rows_and_cols_with_ink(data.rescale(images, zoom, torch.tensor([(0.1, -0.2)] * n, dtype=torch.float64)))
    dy, dx = (m - s for m, s in zip(moved, still))
    # Within a quarter pixel (sampling a digit at every other pixel moves its centroid by up to
    # ~0.15 pixel here); the other conventions would give 0.7 or 2.8 pixels for dy.
    assert torch.allclose(dy.abs(), torch.full_like(dy, 0.05 * 28), atol=0.25)
    assert torch.allclose(dx.abs(), torch.full_like(dx, 0.1 * 28), atol=0.25)
    assert bool((dy * dx < 0).all())  # the two axes move apart, each by its own shift


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


@pytest.mark.parametrize("dcn", ["v1", "v2"])
def test_the_deformable_scale_net_made_from_the_plain_one_starts_as_it(dcn):
    """The experiment's deformable net, built from the trained plain net, computes what it does until
    its offsets move (DCNv2 through doubled weights under masks of 0.5); the offsets then change it."""
    config = model.ScaleNetConfig(deformable=False, width=4)
    plain = model.build_scale_net(config, op=None, seed=0, dtype=torch.float64)
    plain.train()
    x = data.load().images[:8]
    plain(x)  # running statistics away from their start, as after training
    plain.eval()
    deform = model.build_scale_net(model.ScaleNetConfig(deformable=True, dcn=dcn, width=4), op=parity_oracle(), seed=1,
                                   dtype=torch.float64, start=plain).eval()
    assert len(deform.deformable_layers()) == 3
    assert torch.allclose(deform(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.nn.init.constant_(deform.deformable_layers()[1].offset.bias[:18], 0.3)
    assert float((deform(x) - plain(x)).detach().abs().max()) > 1e-6


def parity_oracle():
    from dcnbench import ops

    return ops.get(parity.OP).oracle


def test_every_backend_starts_from_the_same_weights():
    a = model.flat_weights(model.build(parity.TrainSettings().net(), op=parity_oracle(), seed=5, dtype=torch.float64))
    b = model.flat_weights(model.build(parity.TrainSettings().net(), op=parity_oracle(), seed=5, dtype=torch.float32))
    assert torch.allclose(a, b, rtol=2 ** -24, atol=0) and not torch.equal(a, model.flat_weights(
        model.build(parity.TrainSettings().net(), op=parity_oracle(), seed=6, dtype=torch.float64)))


# ---- the experiment -----------------------------------------------------------------------------


def _scale_net(width=4):
    return model.build_scale_net(model.ScaleNetConfig(deformable=True, width=width), op=parity_oracle(), seed=0,
                                 dtype=torch.float64)


def test_zero_offsets_sample_the_regular_receptive_field():
    net = _scale_net()
    image = data.load().images[0]
    points = offsets.sampling_points(net, image, (3, 3), learned=False)
    # Unit (3, 3) of the 7x7 map sits at pixel 4 * 3 = 12 of the image; three stacked 3x3 layers of
    # strides 2, 1, 2 reach pixels 12 + 2*a + 2*b + c for a, b, c in {-1, 0, 1}: 729 points, 5..19.
    assert points.shape == (729, 2)
    expected = sorted({12 + 2 * a + 2 * b + c for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)})
    assert sorted(set(points[:, 0].tolist())) == expected and sorted(set(points[:, 1].tolist())) == expected
    assert np.array_equal(offsets.sampling_points(net, image, (3, 3)), points)  # the net's offsets start at zero
    # Per axis the variance of 2a + 2b + c is 4 * 2/3 + 4 * 2/3 + 2/3 = 6: an RMS radius of sqrt(12).
    assert offsets.spread(points) == pytest.approx(12 ** 0.5)


def test_a_deformable_scale_net_from_scratch_draws_its_deformable_weights_from_the_seed():
    # Not left as torch.empty's memory: the same seed gives the same finite weights, another seed others.
    def weights(seed):
        net = model.build_scale_net(model.ScaleNetConfig(deformable=True, width=4), op=parity_oracle(), seed=seed,
                                    dtype=torch.float64)
        return torch.cat([t.detach().flatten() for layer in net.deformable_layers() for t in (layer.weight, layer.bias)])

    first, again, other = weights(0), [weights(0) for _ in range(3)], weights(1)
    assert torch.isfinite(first).all() and all(torch.equal(first, w) for w in again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("layer, pixels", [(0, 1.0), (1, 2.0), (2, 2.0)])
def test_an_offset_moves_the_sampling_points_by_the_strides_below_it(layer, pixels):
    """One pixel of offset (Δy = 1 at every tap) in deformable layer k moves every point by the
    strides between its input map and the image: 1 for the first (on the image's grid), 2 above
    the stride-2 layer."""
    net = _scale_net()
    with torch.no_grad():
        net.deformable_layers()[layer].offset.bias[0:18:2] = 1.0
    image = data.load().images[0]
    moved = offsets.sampling_points(net, image, (3, 3)) - offsets.sampling_points(net, image, (3, 3), learned=False)
    assert np.allclose(moved, [[pixels, 0.0]])


def test_the_figure_units_are_on_the_ink_and_on_the_background():
    image = np.zeros((28, 28))
    image[18:22, 6:10] = 1.0  # ink centred at pixel (19.5, 7.5): unit (5, 2)
    assert offsets.ink_unit(image, 7) == (5, 2)
    assert offsets.background_unit(image, 7) == (1, 5)


def test_fine_tuning_moves_only_the_offsets_and_the_batch_norms():
    s = experiment.ExperimentSettings(width=4, batch=32, finetune_epochs=1)
    parts = data.Split(train=data.load().take(torch.arange(64)), test=data.load().take(torch.arange(64, 96)))
    plain = model.build_scale_net(model.ScaleNetConfig(deformable=False, width=4), op=None, seed=0, dtype=torch.float32)
    net = model.build_scale_net(model.ScaleNetConfig(deformable=True, width=4), op=_get("ext").ops[parity.OP], seed=0,
                                dtype=torch.float32, start=plain)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    plan = experiment.finetune_plan("deformable", "fine-tuned", net, s)
    phase = experiment.train_phase(plan, parts, (parts.test, data.scaled(parts.test, 0)), s)
    assert len(phase.losses) == 2 and len(phase.epochs) == 1
    after = net.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".offset." in k or ".bn." in k for k in moved), moved
    assert any(".offset." in k for k in moved) and any(k.endswith("bn.weight") for k in moved)


def test_scaled_digits_experiment_prints_the_table_beside_the_seeds_and_writes_the_figures(tmp_path, monkeypatch):
    few = data.load().take(torch.arange(300))  # 200 training and 100 test digits: the path, not the accuracy
    monkeypatch.setattr(data, "load", lambda: few)
    out = invoke("train", "--experiment", "scaled-digits", "--backend", "ext", "--epochs", "1", "--width", "4",
                 "--finetune-epochs", "1", "--batch", "100", "--seed", "3", "--out", str(tmp_path / "exp"))
    assert out.returncode == 0, out.stderr
    assert "98.74 %" in out.stdout and "92.55 %" in out.stdout and "scaled digits" in out.stdout
    assert "settings: backend ext, DCNv1, width 4" in out.stdout and "seed 3" in out.stdout
    record = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert [p["key"] for p in record["phases"]] == ["plain", "deformable", "control"]
    assert record["settings"]["seed"] == 3 and record["settings"]["finetune_lr"] == pytest.approx(5e-4)
    assert all(len(p["losses"]) == 2 and len(p["epochs"]) == 1 for p in record["phases"])
    assert all(0 <= v <= 1 for p in record["phases"] for v in p["accuracy"].values())
    assert len(record["offset_panels"]) == 4 and all(p["spread_regular"] > 0 for p in record["offset_panels"])
    for name in ("offset-fields.png", "loss-curves.png"):
        assert (tmp_path / "exp" / name).read_bytes()[:4] == b"\x89PNG"
    assert "| scaled digits |" in (tmp_path / "exp" / "table.md").read_text()


# ---- usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--dcn", "v3"], "unknown --dcn 'v3'"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--batch", "1"], "--batch 1 is out of range"),
    (["--experiment", "rotated"], "unknown --experiment 'rotated'"),
    (["--experiment", "scaled-digits", "-b", "ext", "-b", "torchvision"], "--experiment trains with one deformable kernel"),
    (["--experiment", "scaled-digits", "--width", "0"], "--width 0 is out of range"),
    (["--backend", "nope"], "unknown backend 'nope'"),
])
def test_usage_errors_are_exit_2_with_a_hint(args, message):
    out = invoke("train", *args)
    assert out.returncode == 2
    assert f"error: {message}" in out.stderr and "hint:" in out.stderr

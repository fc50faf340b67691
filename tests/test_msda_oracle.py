"""ms_deform_attn's oracle against values worked out by hand, its identities (grid_sample, pixel
centres), gradcheck, the non-finite rule, the contract's errors, the shape grammar and presets,
and the suite's kink margin. No backend beyond the oracle; transformers is not imported."""

import math

import pytest
import torch

from dcnbench.errors import UsageError
from dcnbench.timing.limits import default_max_bytes
from dcnbench.ops import get, preset
from dcnbench.ops.contract import ContractError
from dcnbench.ops.ms_deform_attn.contract import MsdaGeometry, parse_shape
from dcnbench.ops.ms_deform_attn.oracle import ms_deform_attn as oracle
from dcnbench.ops.ms_deform_attn.references import at_pixel_centres, via_grid_sample
from dcnbench.ops.ms_deform_attn.workloads import MsdaCase, cost

SPEC = get("ms_deform_attn")


def call(fn, value, levels, loc, attn, step=64):
    shapes = torch.tensor(levels, dtype=torch.int64)
    starts = torch.tensor([0] + [h * w for h, w in levels][:-1], dtype=torch.int64).cumsum(0)
    return fn(value, shapes, starts, loc, attn, step)


def test_the_oracle_matches_values_worked_out_by_hand():
    # One level of 2x3 pixels holding 0..5 (row-major), one head, one channel, three points.
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)
    # (x, y) normalised: pixel (x·3 − 0.5, y·2 − 0.5).
    loc = torch.tensor([[0.5 / 3, 0.25],  # pixel centre (0, 0): 0
                        [2.0 / 3, 0.5],  # pixel (1.5, 0.5): mean of 1, 2, 4, 5 = 3
                        [0.0, 0.25]],  # pixel (-0.5, 0): half of pixel (0, 0) and half outside: 0.5·0 = 0
                       dtype=torch.float64).view(1, 1, 1, 1, 3, 2)
    attn = torch.tensor([2.0, 1.0, 5.0], dtype=torch.float64).view(1, 1, 1, 1, 3)
    out = call(oracle, value, [(2, 3)], loc, attn)
    assert out.shape == (1, 1, 1) and float(out) == pytest.approx(3.0)
    # Pixel (2.5, 1): the right half of pixel (2, 1), which holds 5, and outside: 2.5.
    loc2 = torch.tensor([1.0, 0.75], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    assert float(call(oracle, value, [(2, 3)], loc2, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))) == 2.5


def test_the_location_gradient_is_the_map_slope_times_the_level_size():
    # Along x the map 0, 1, 2 rises 1 per pixel: d out / d loc_x = W · 1 = 3; along y 3 per row: H · 3 = 6.
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)
    loc = torch.tensor([0.4, 0.45], dtype=torch.float64).view(1, 1, 1, 1, 1, 2).requires_grad_()
    attn = torch.full((1, 1, 1, 1, 1), 2.0, dtype=torch.float64, requires_grad=True)
    out = call(oracle, value, [(2, 3)], loc, attn)
    out.backward()
    assert loc.grad.flatten().tolist() == pytest.approx([2 * 3.0, 2 * 6.0])
    assert float(attn.grad) == pytest.approx(float(out.detach()) / 2)


def random_case(**kw):
    geo = MsdaGeometry(n=2, levels=((5, 7), (3, 2), (1, 4)), heads=3, channels=4, queries=6, points=3)
    return MsdaCase(name="t", geometry=geo, offsets=kw.pop("offsets", "outside"), seed=kw.pop("seed", 5), **kw)


@pytest.mark.parametrize("offsets", ["outside", "border", "edges"])
def test_the_direct_formula_and_grid_sample_agree(offsets):
    case = random_case(offsets=offsets)
    t = {k: v.requires_grad_(k in case.differentiable) for k, v in case.inputs().items()}
    a, b = case.call(oracle, t), case.call(via_grid_sample, t)
    assert (a - b).abs().max() < 1e-14
    cot = torch.randn_like(a)
    ga = torch.autograd.grad(a, [t[k] for k in case.differentiable], cot)
    gb = torch.autograd.grad(b, [t[k] for k in case.differentiable], cot)
    assert all((x - y).abs().max() < 1e-12 for x, y in zip(ga, gb))


def test_pixel_centres_read_their_pixel_alone():
    geo = MsdaGeometry(n=1, levels=((4, 8), (2, 4)), heads=2, channels=3, queries=5, points=3)
    case = MsdaCase(name="t", geometry=geo, offsets="centres", kink_margin=None, seed=3)
    t = case.inputs()
    assert torch.equal(case.call(oracle, t), case.call(at_pixel_centres, t))


def test_gradcheck_passes_on_value_locations_and_weights():
    case = random_case(offsets="border")
    t = case.inputs()
    names = list(case.differentiable)

    def f(*xs):
        return case.call(oracle, t | dict(zip(names, xs)))

    assert torch.autograd.gradcheck(f, tuple(t[k].clone().requires_grad_() for k in names), eps=1e-6, atol=1e-6)


def test_a_non_finite_location_poisons_its_head_only_and_sends_the_map_nothing():
    case = random_case()
    t = {k: v.requires_grad_(k in case.differentiable) for k, v in case.inputs().items()}
    loc = t["sampling_locations"].detach().clone()
    loc[1, 2, 1, 0, 0, 0] = float("nan")
    loc = loc.requires_grad_()
    out = case.call(oracle, t | {"sampling_locations": loc})
    bad = ~out.isfinite()
    d = case.geometry.channels
    assert bad[1, 2, d:2 * d].all() and int(bad.sum()) == d
    out.backward(torch.ones_like(out))
    assert t["value"].grad.isfinite().all()
    assert loc.grad[1, 2, 1, 0, 0].isnan().all() and int((~loc.grad.isfinite()).sum()) == 2
    assert t["attention_weights"].grad[1, 2, 1, 0, 0].isnan() and int((~t["attention_weights"].grad.isfinite()).sum()) == 1


def test_an_infinite_pixel_reaches_only_the_samples_that_read_it():
    value = torch.zeros(1, 9, 1, 1, dtype=torch.float64)
    value[0, 8] = float("inf")  # pixel (x 2, y 2) of a 3x3 level
    # (x, y) pixels: (0.5, 0.5) reads pixels 0..1 x 0..1; (1.5, 1.5) reads (2, 2); (-2, 2) reads nothing
    # (a kernel clamping its corners into the map would meet the Inf at (0, 2)... or (2, 2) for (3.5, 2)).
    pixels = torch.tensor([[0.5, 0.5], [1.5, 1.5], [-2.0, 2.0], [3.5, 2.0]], dtype=torch.float64)
    loc = ((pixels + 0.5) / 3).view(1, 4, 1, 1, 1, 2)
    out = call(oracle, value, [(3, 3)], loc, torch.ones(1, 4, 1, 1, 1, dtype=torch.float64)).flatten()
    assert out.isfinite().tolist() == [True, False, True, True] and out[[0, 2, 3]].tolist() == [0.0, 0.0, 0.0]


def test_the_contract_names_what_was_got_and_what_was_expected():
    case = random_case()
    t = case.inputs()

    def err(**bad):
        with pytest.raises(ContractError) as exc:
            case.call(oracle, t | bad)
        return str(exc.value)

    assert "expected torch.int64" in err(value_spatial_shapes=t["value_spatial_shapes"].int())
    assert "expected [0, 35, 41]" in err(value_level_start_index=torch.tensor([0, 36, 41]))
    assert "Σ H_l·W_l = 45" in err(value=t["value"][:, :40])
    assert "attention_weights has shape" in err(attention_weights=t["attention_weights"][..., :2])
    assert "like value" in err(sampling_locations=t["sampling_locations"].float())
    with pytest.raises(ContractError, match="im2col_step"):
        oracle(*(t[k] for k in ("value", "value_spatial_shapes", "value_level_start_index", "sampling_locations",
                                "attention_weights")), 0)


def test_the_shape_grammar_and_the_presets():
    geo = parse_shape("2,300,8,32,4:100x167,50x84:16")
    assert geo.levels == ((100, 167), (50, 84)) and geo.im2col_step == 16 and geo.output_shape == (2, 300, 256)
    assert parse_shape(geo.shape_text) == geo
    for bad in ("1,2,3:4x4", "1,2,3,4,5:4", "1,2,3,4,5:4x0", "1,2,3,4,x:4x4"):
        with pytest.raises(UsageError):
            parse_shape(bad)
    (encoder,) = preset("deformable-detr-encoder")
    assert encoder.levels == ((100, 167), (50, 84), (25, 42), (13, 21)) and encoder.queries == encoder.s == 22223
    assert [g.queries for g in preset("deformable-detr", "ms_deform_attn")] == [22223, 300]
    assert preset("rt-detr-decoder")[0].levels == ((80, 80), (40, 40), (20, 20))
    assert preset("dino-decoder")[0].queries == 900
    # The encoder fits the default memory bound (a float32 fwd+bwd, gather buffers included).
    assert cost(MsdaCase(name="s", geometry=encoder, dtype="float32")).bytes < default_max_bytes()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_suite_coordinate_keeps_the_kink_margin_after_rounding(dtype):
    for case in SPEC.suite():
        if case.dtype != dtype or case.kink_margin is None or case.poison:
            continue
        loc = case.inputs()["sampling_locations"].double()
        for level, (h, w) in enumerate(case.geometry.levels):
            for axis, size in ((0, w), (1, h)):
                p = loc[:, :, :, level, :, axis] * size - 0.5
                frac = (p - p.round()).abs()
                assert not frac.numel() or float(frac.min()) > 5e-4, (case.case_id, level, axis)


def test_the_suite_covers_what_the_issue_lists():
    cases = SPEC.suite()
    geos = [c.geometry for c in cases]
    assert {g.num_levels for g in geos} >= {1, 4, 5} and {g.points for g in geos} >= {1, 4, 8}
    assert {g.heads for g in geos} >= {1, 8} and {g.channels for g in geos} >= {1, 32}
    assert {g.queries for g in geos} >= {1, 513} and {g.n for g in geos} >= {0, 1}
    assert any(g.n % g.im2col_step and g.n > g.im2col_step for g in geos)
    assert any(any(h != w for h, w in g.levels) and max(h * w for h, w in g.levels) >= 100 * min(h * w for h, w in g.levels)
               for g in geos)
    assert {c.offsets for c in cases} >= {"uniform", "outside", "border", "edges", "centres"}
    assert {c.weights for c in cases} >= {"softmax", "uniform", "signed"}
    assert {c.dtype for c in cases} == {"float64", "float32", "float16", "bfloat16"}
    assert {c.check for c in cases} >= {"oracle", "grid_sample", "pixel_centres", "gradcheck", "compile", "export"}
    assert any(c.poison == "unread" for c in cases) and any(c.poison == "read" for c in cases)
    assert math.isfinite(float(SPEC.flops(geos[0])))

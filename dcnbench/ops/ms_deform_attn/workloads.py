"""Multi-scale deformable attention's cases: the frozen case spec and the seeded tensors it stands for."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from dcnbench.errors import UsageError
from dcnbench.timing.limits import Cost
from dcnbench.ops.case import DTYPES, Case
from dcnbench.ops.contract import ITEMSIZE
from dcnbench.ops.deform_conv2d.workloads import nudge_from_integers
from dcnbench.ops.ms_deform_attn.contract import MsdaGeometry

# Location distributions (normalised (x, y); s = case.offset_scale), per level:
#   uniform:  U(0, 1), what reference points plus small offsets give (corners outside the map only
#             within half a pixel of the edge)
#   outside:  U(-s, 1 + s): many points outside [0, 1], some a pixel or more outside (reading nothing)
#   interior: pixel coordinates in [0.05, size - 1.05]: every corner inside the map (levels of 3 or more)
#   border:   pixel coordinates in the two border bands of each axis, [-1.5, 1] and [size-2, size+0.5]
#   edges:    each coordinate exactly 0 or 1 (the map's outer edges: pixel -0.5 and size-0.5) or U(0, 1)
#   centres:  exactly on pixel centres (i + 0.5)/size, a quarter of them one pixel outside the map
#             (kinks: the kink margin is off for them; the pixel-centre identity needs no interpolation)
#   fenced:   rows >= 1.2 and columns below half the map, a quarter far outside: the non-finite cases
#             poison row 0 and the right half, which no sample reads
LOCATION_KINDS = ("uniform", "outside", "interior", "border", "edges", "centres", "fenced")
# Attention weights: softmax over each (query, head)'s L·P points (what the modules feed); uniform
# U(0.2, 1.8) and signed N(0, 1) (weights that do not sum to 1); halves: +1 for the first half of the
# points, -1 for the rest (sums that cancel, with large partial sums on the way).
WEIGHT_KINDS = ("softmax", "uniform", "signed", "halves")
# Values: normal N(0, 1); large U(3400, 3600): with `halves` weights over 40 points the partial sums
# reach 70000, past float16's 65504, while the result, about 35000, is well inside it.
VALUE_KINDS = ("normal", "large")


@dataclass(frozen=True, kw_only=True)
class MsdaCase(Case):
    geometry: MsdaGeometry
    offsets: str = "uniform"  # the location distribution (LOCATION_KINDS)
    offset_scale: float = 0.5
    weights: str = "softmax"
    values: str = "normal"

    differentiable: ClassVar[tuple[str, ...]] = ("value", "sampling_locations", "attention_weights")
    geometry_type: ClassVar[type] = MsdaGeometry

    @property
    def variant(self) -> str:
        return "msda"

    def inputs(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        tensors = drawn(self, gen)
        if self.poison:
            tensors = poisoned(self, tensors)
        geo = self.geometry
        tensors["value_spatial_shapes"] = torch.tensor(geo.levels, dtype=torch.int64).reshape(geo.num_levels, 2)
        tensors["value_level_start_index"] = torch.tensor(geo.start_index, dtype=torch.int64)
        order = ("value", "value_spatial_shapes", "value_level_start_index", "sampling_locations", "attention_weights")
        return {k: self.arrange(tensors[k].to(DTYPES[self.dtype]) if tensors[k].is_floating_point() else tensors[k])
                .to(device) for k in order}

    def call(self, fn, t: dict[str, torch.Tensor]):
        return fn(t["value"], t["value_spatial_shapes"], t["value_level_start_index"], t["sampling_locations"],
                  t["attention_weights"], self.geometry.im2col_step)

    def reference_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With poison "unread", the poisoned pixels zeroed (nothing reads them)."""
        if self.poison != "unread":
            return inputs
        v = inputs["value"]
        return inputs | {"value": torch.where(v.isfinite(), v, torch.zeros_like(v))}

    @classmethod
    def for_speed(cls, s) -> "MsdaCase":
        """Locations in [0, 1] and softmaxed weights, as the modules feed them."""
        return cls(name="speed", geometry=s.geometry, dtype=s.dtype, seed=s.seed, kink_margin=None)


def locations(case: MsdaCase, gen: torch.Generator) -> torch.Tensor:
    """(N, Lq, M, L, P, 2) float64 normalised (x, y) of the case's kind, every pixel coordinate kept
    at least the kink margin (and two ulps of the dtype, in pixels) from an integer."""
    geo = case.geometry
    shape = (geo.n, geo.queries, geo.heads, geo.points)
    kind, s = case.offsets, case.offset_scale

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    per_level = []
    for h, w in geo.levels:
        if kind == "uniform":
            px, py = uniform(0, 1) * w - 0.5, uniform(0, 1) * h - 0.5
        elif kind == "outside":
            px, py = uniform(-s, 1 + s) * w - 0.5, uniform(-s, 1 + s) * h - 0.5
        elif kind == "interior":
            px, py = uniform(0.05, max(w - 1.05, 0.05)), uniform(0.05, max(h - 1.05, 0.05))
        elif kind == "border":
            def bands(size):
                pick = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5
                return torch.where(pick, uniform(-1.5, 1.0), uniform(size - 2.0, size + 0.5))
            px, py = bands(w), bands(h)
        elif kind == "edges":
            def edge(size):
                u = torch.rand(shape, generator=gen, dtype=torch.float64)
                loc = torch.where(u < 1 / 3, 0.0, torch.where(u < 2 / 3, 1.0, uniform(0, 1)))
                return loc * size - 0.5
            px, py = edge(w), edge(h)
        elif kind == "centres":
            def centre(size):
                i = torch.randint(0, size, shape, generator=gen).to(torch.float64)
                out = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.25
                side = torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5, -1.0, float(size))
                return torch.where(out, side, i)
            px, py = centre(w), centre(h)
        elif kind == "fenced":
            px, py = uniform(-0.9, max(w / 2 - 1.5, -0.5)), uniform(1.2, h - 1.5)
            far = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.25
            px = torch.where(far, uniform(-6.0, -1.5), px)
        else:
            raise UsageError(f"unknown location distribution '{kind}'", hint=f"choose from: {', '.join(LOCATION_KINDS)}")
        if case.kink_margin is not None:
            px, py = away_from_kinks(px, w, case), away_from_kinks(py, h, case)
        per_level.append(torch.stack([(px + 0.5) / w, (py + 0.5) / h], dim=-1))
    return torch.stack(per_level, dim=3) if per_level else torch.zeros(*geo.locations_shape, dtype=torch.float64)


def away_from_kinks(p: torch.Tensor, size: int, case: MsdaCase) -> torch.Tensor:
    """Pixel coordinates p moved at least the kink margin from an integer, and far enough that
    rounding the location p/size to the case's dtype (half an ulp of it, times size, in pixels)
    cannot carry one across."""
    if not p.numel():
        return p
    biggest = max(float((p.abs().max() + 0.5) / size), 2.0**-14)
    ulp = torch.finfo(DTYPES[case.dtype]).eps * 2.0 ** math.floor(math.log2(biggest))
    return nudge_from_integers(p, max(case.kink_margin, 2 * ulp * size))


def weights(case: MsdaCase, gen: torch.Generator) -> torch.Tensor:
    """(N, Lq, M, L, P) float64 attention weights of the case's kind."""
    geo = case.geometry
    shape = geo.weights_shape
    if case.weights == "softmax":
        logits = torch.randn(shape, generator=gen, dtype=torch.float64)
        return torch.softmax(logits.flatten(-2), dim=-1).reshape(shape)
    if case.weights == "uniform":
        return 0.2 + 1.6 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if case.weights == "signed":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if case.weights == "halves":
        k = geo.num_levels * geo.points
        sign = torch.where(torch.arange(k) < k // 2, 1.0, -0.5).to(torch.float64)
        return sign.reshape(geo.num_levels, geo.points).expand(shape).clone()
    raise UsageError(f"unknown attention weight distribution '{case.weights}'", hint=f"choose from: {', '.join(WEIGHT_KINDS)}")


def drawn(case: MsdaCase, gen: torch.Generator) -> dict[str, torch.Tensor]:
    geo = case.geometry
    if case.values == "normal":
        value = torch.randn(geo.value_shape, generator=gen, dtype=torch.float64)
    elif case.values == "large":
        value = 3400 + 200 * torch.rand(geo.value_shape, generator=gen, dtype=torch.float64)
    else:
        raise UsageError(f"unknown value distribution '{case.values}'", hint=f"choose from: {', '.join(VALUE_KINDS)}")
    return {"value": value, "sampling_locations": locations(case, gen), "attention_weights": weights(case, gen)}


# Non-finite values planted in turn (Inf, NaN, -Inf), as ops/case.py's.
_BAD = (float("inf"), float("nan"), float("-inf"))


def poisoned(case: MsdaCase, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Non-finite values in row 0 and the right half of every level's map, which the `fenced`
    locations never read (so a kernel that reads a clamped pixel (0, 0) at weight 0 meets one);
    with "read", also in two pixels some samples read, and a NaN and an infinite location."""
    geo = case.geometry
    value = t["value"].clone()
    for (h, w), start in zip(geo.levels, geo.start_index):
        level = value[:, start:start + h * w].view(geo.n, h, w, geo.heads, geo.channels)
        level[:, 0] = _BAD[0]
        level[:, :, w // 2 + 1:] = _BAD[1]
        level[:, h - 1, w // 2 + 1:] = _BAD[2]
    out = t | {"value": value}
    if case.poison == "read" and geo.n and geo.queries:
        h, w = geo.levels[0]
        level = value[:, :h * w].view(geo.n, h, w, geo.heads, geo.channels)
        level[0, 2, 0, 0, 0] = _BAD[1]
        level[0, min(3, h - 1), 1, 0] = _BAD[0]
        loc = t["sampling_locations"].clone()
        loc[0, 0, 0, 0, 0, 0] = float("nan")
        loc[-1, -1, -1, -1, -1, 1] = float("inf")
        out["sampling_locations"] = loc
    elif case.poison not in ("unread", "read"):
        raise UsageError(f"unknown poison '{case.poison}'", hint="choose from: unread, read")
    return out


def cost(case: MsdaCase) -> Cost:
    """One forward and backward: the tensors and their gradients, plus the sampling buffers of the
    gather formulations (every point reads four corners of D channels, kept for the backward)."""
    g = case.geometry
    item = max(4, ITEMSIZE[case.dtype])  # half types are computed in float32
    tensors = float(g.n) * (g.s * g.heads * g.channels + 3 * g.queries * g.heads * g.num_levels * g.points
                            + g.queries * g.heads * g.channels)
    samples = float(g.n) * g.queries * g.heads * g.num_levels * g.points * g.channels
    return Cost(bytes=item * (2 * tensors + 6 * samples))


def probe_cases(dtype: str) -> list[MsdaCase]:
    """One small call: two non-square levels, the output's shape unlike any input's."""
    geo = MsdaGeometry(n=1, levels=((3, 5), (2, 3)), heads=2, channels=4, queries=3, points=2)
    return [MsdaCase(name="probe", geometry=geo, dtype=dtype)]

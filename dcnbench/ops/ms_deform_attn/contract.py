"""Multi-scale deformable attention's contract (Deformable DETR's MSDeformAttn core): geometry,
validation, FLOPs, the shape grammar and the presets. Torch-free at import.

Every backend is called with the CUDA function's signature that Deformable-DETR's
`MSDeformAttnFunction`, mmcv's `MultiScaleDeformableAttnFunction` and the hub kernels share:

    ms_deform_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                   attention_weights, im2col_step)

- value (N, S, M, D): M heads of D channels at S = Σ H_l·W_l positions, the L levels concatenated,
  each row-major (position s of level l is y·W_l + x after value_level_start_index[l]);
- value_spatial_shapes (L, 2) int64, row l = (H_l, W_l); value_level_start_index (L,) int64, the
  running sum 0, H_0·W_0, H_0·W_0 + H_1·W_1, ...;
- sampling_locations (N, Lq, M, L, P, 2), normalised (x, y): 0 and 1 are the map's outer edges;
- attention_weights (N, Lq, M, L, P), used as given (the module's softmax is not the op's);
- output (N, Lq, M·D): channel m·D + d = Σ_{l,p} attention_weights · bilinear(value of head m,
  level l, channel d) at pixel (x·W_l − 0.5, y·H_l − 0.5).

The bilinear read is grid_sample's with align_corners=False and padding zeros (rule Z): the cell
of a point is [floor(p), floor(p) + 1] in each axis, a corner outside the level's map contributes
zero, so a point adds nothing once it is a pixel or more outside. Differentiable in value,
sampling_locations and attention_weights. A point whose location is not finite reads nothing and
makes its output (all D channels of its head) NaN, its location and weight gradients NaN; the map
gets no gradient from it (README "Non-finite values"). im2col_step only bounds how many images a
kernel holds at once: any batch is valid here (the official kernels also assert
N % min(N, im2col_step) == 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnbench.errors import UsageError
from dcnbench.ops.contract import ContractError

OP = "ms_deform_attn"
SIGNATURE = "(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights, im2col_step)"
IM2COL_STEP = 64  # what Deformable-DETR's, mmcv's and transformers' modules pass


@dataclass(frozen=True)
class MsdaGeometry:
    """Everything about one call that does not depend on tensor values."""

    n: int
    levels: tuple[tuple[int, int], ...]  # (H_l, W_l) per level
    heads: int  # M
    channels: int  # D, per head
    queries: int  # Lq
    points: int  # P, per level and head
    im2col_step: int = IM2COL_STEP

    @classmethod
    def from_dict(cls, d: dict) -> "MsdaGeometry":
        return cls(n=d["n"], levels=tuple(tuple(int(v) for v in hw) for hw in d["levels"]), heads=d["heads"],
                   channels=d["channels"], queries=d["queries"], points=d["points"],
                   im2col_step=d.get("im2col_step", IM2COL_STEP))

    @property
    def op(self) -> str:
        return OP

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def s(self) -> int:
        return sum(h * w for h, w in self.levels)

    @property
    def start_index(self) -> tuple[int, ...]:
        starts, total = [], 0
        for h, w in self.levels:
            starts.append(total)
            total += h * w
        return tuple(starts)

    @property
    def value_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.s, self.heads, self.channels)

    @property
    def locations_shape(self) -> tuple[int, ...]:
        return (self.n, self.queries, self.heads, self.num_levels, self.points, 2)

    @property
    def weights_shape(self) -> tuple[int, ...]:
        return (self.n, self.queries, self.heads, self.num_levels, self.points)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.n, self.queries, self.heads * self.channels)

    @property
    def shape_text(self) -> str:
        return format_shape(self)

    def problems(self) -> list[str]:
        """Why this geometry is not a valid call (empty when it is)."""
        found = []
        if self.n < 0 or self.queries < 0:
            found.append("N and Lq must be >= 0")
        if min(self.heads, self.channels, self.points) < 1:
            found.append("M, D and P must be positive")
        if not self.levels:
            found.append("there must be at least one level")
        elif min(min(hw) for hw in self.levels) < 1:
            found.append(f"every level's H and W must be positive, got {list(self.levels)}")
        if self.im2col_step < 1:
            found.append(f"im2col_step {self.im2col_step} must be >= 1")
        return found

    def flops(self) -> int:
        """Forward FLOPs of the attention-weighted sum (one multiply-add per sampled value, per channel);
        the bilinear arithmetic is not counted."""
        return 2 * self.n * self.queries * self.heads * self.channels * self.num_levels * self.points


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def _int64(name: str, t) -> None:
    if str(t.dtype) != "torch.int64":
        raise ContractError(f"{name} is {t.dtype}, expected torch.int64 (the kernels read it as int64_t)")


def geometry_of(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                im2col_step, read_values: bool = True) -> MsdaGeometry:
    """The geometry of a call, with "got X, expected Y" errors. `read_values` False skips the checks that
    read the shape tensors' values (under torch.compile a kernel checks them itself)."""
    if value.dim() != 4:
        raise ContractError(f"value must be 4-D (N, S, M, D), got shape {_shape(value)}")
    if value_spatial_shapes.dim() != 2 or value_spatial_shapes.shape[1] != 2:
        raise ContractError(f"value_spatial_shapes must be (L, 2) rows (H, W), got shape {_shape(value_spatial_shapes)}")
    _int64("value_spatial_shapes", value_spatial_shapes)
    _int64("value_level_start_index", value_level_start_index)
    n, s, m, d = _shape(value)
    levels_n = value_spatial_shapes.shape[0]
    if _shape(value_level_start_index) != (levels_n,):
        raise ContractError(f"value_level_start_index has shape {_shape(value_level_start_index)}, expected ({levels_n},)")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ContractError(f"sampling_locations must be (N, Lq, M, L, P, 2), got shape {_shape(sampling_locations)}")
    lq, p = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (n, lq, m, levels_n, p, 2)
    if _shape(sampling_locations) != expected:
        raise ContractError(f"sampling_locations has shape {_shape(sampling_locations)}, expected {expected}")
    if _shape(attention_weights) != expected[:-1]:
        raise ContractError(f"attention_weights has shape {_shape(attention_weights)}, expected {expected[:-1]}")
    for name, t in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.dtype != value.dtype:
            raise ContractError(f"{name} is {t.dtype}, expected {value.dtype} like value")
    if not isinstance(im2col_step, int) or isinstance(im2col_step, bool) or im2col_step < 1:
        raise ContractError(f"im2col_step is {im2col_step!r}, expected an integer >= 1")
    if read_values:
        levels = tuple(tuple(int(v) for v in hw) for hw in value_spatial_shapes.tolist())
    else:  # placeholders of the right count; the kernel checks the values
        levels = ((1, 1),) * levels_n
    geo = MsdaGeometry(n=n, levels=levels, heads=m, channels=d, queries=lq, points=p, im2col_step=im2col_step)
    problems = geo.problems()
    if problems:
        raise ContractError("; ".join(problems))
    if read_values:
        if geo.s != s:
            raise ContractError(f"value has S = {s} positions, expected Σ H_l·W_l = {geo.s} for levels {list(levels)}")
        starts = tuple(int(v) for v in value_level_start_index.tolist())
        if starts != geo.start_index:
            raise ContractError(f"value_level_start_index is {list(starts)}, expected {list(geo.start_index)} "
                                "(the running sum of H_l·W_l)")
    return geo


def check_call(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
               im2col_step) -> MsdaGeometry:
    """Validate a call (the six arguments)."""
    return geometry_of(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                       im2col_step)


# ---- shape grammar and presets -------------------------------------------------------------------

SHAPE_GRAMMAR = "N,Lq,M,D,P:H0xW0[,H1xW1...][:im2col_step]"
SHAPE_EXAMPLE = "1,300,8,32,4:100x167,50x84,25x42,13x21"


def parse_shape(spec: str) -> MsdaGeometry:
    """Parse `N,Lq,M,D,P:H0xW0[,H1xW1...][:im2col_step]` (im2col_step 64 by default)."""
    hint = f"write {SHAPE_GRAMMAR}, e.g. {SHAPE_EXAMPLE}"
    parts = [p.strip() for p in spec.strip().split(":")]
    if len(parts) not in (2, 3):
        raise UsageError(f"malformed --shape '{spec}' for {OP}: expected 2 or 3 ':'-separated parts", hint=hint)

    def num(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"malformed --shape '{spec}': '{text}' is not an integer", hint=hint) from None

    head = [t.strip() for t in parts[0].split(",")]
    if len(head) != 5 or not all(head):
        raise UsageError(f"malformed --shape '{spec}': N,Lq,M,D,P needs 5 values", hint=hint)
    levels = []
    for item in parts[1].split(","):
        h, x, w = item.strip().partition("x")
        if not x:
            raise UsageError(f"malformed --shape '{spec}': level '{item.strip()}' is not HxW", hint=hint)
        levels.append((num(h), num(w)))
    n, lq, m, d, p = (num(t) for t in head)
    step = num(parts[2]) if len(parts) == 3 else IM2COL_STEP
    geo = MsdaGeometry(n=n, levels=tuple(levels), heads=m, channels=d, queries=lq, points=p, im2col_step=step)
    problems = geo.problems()
    if problems:
        raise UsageError(f"invalid --shape '{spec}' for {OP}: {'; '.join(problems)}", hint=hint)
    return geo


def format_shape(geo: MsdaGeometry) -> str:
    levels = ",".join(f"{h}x{w}" for h, w in geo.levels)
    return f"{geo.n},{geo.queries},{geo.heads},{geo.channels},{geo.points}:{levels}:{geo.im2col_step}"


def pyramid(height: int, width: int, strides: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A backbone's feature maps of an image: ceil(size / stride) per level (ResNet's padded convs)."""
    return tuple((-(-height // s), -(-width // s)) for s in strides)


def _text(n: int, queries: int, levels, heads: int = 8, channels: int = 32, points: int = 4) -> str:
    return format_shape(MsdaGeometry(n=n, levels=tuple(levels), heads=heads, channels=channels, queries=queries,
                                     points=points))


# The models' own settings (d_model 256 = 8 heads x 32 channels, 4 points per level and head):
# Deformable DETR on an 800x1333 image, 4 levels at strides 8, 16, 32, 64 (100x167 ... 13x21, S =
# 22223): its encoder attends from every position (Lq = S), its decoder from 300 queries. RT-DETR's
# decoder: 3 levels (strides 8-32) of a 640x640 image, 300 queries. DINO's decoder: 900 queries
# over Deformable DETR's 4 levels.
DETR_LEVELS = pyramid(800, 1333, (8, 16, 32, 64))
RTDETR_LEVELS = pyramid(640, 640, (8, 16, 32))
ENCODER = _text(1, sum(h * w for h, w in DETR_LEVELS), DETR_LEVELS)
DECODER = _text(1, 300, DETR_LEVELS)
PRESETS: dict[str, tuple[str, ...]] = {
    "deformable-detr-decoder": (DECODER,),
    "deformable-detr-encoder": (ENCODER,),
    "deformable-detr": (ENCODER, DECODER),
    "rt-detr-decoder": (_text(1, 300, RTDETR_LEVELS),),
    "dino-decoder": (_text(1, 900, DETR_LEVELS),),
}

"""The small networks `dcnbench train` trains, plain or deformable, with any backend's deform_conv2d.

The parity net (DigitNet, `dcnbench train --backend ...`):

    conv1 3x3 (1 -> c1), tanh, 2x2 average pool          28x28 -> 14x14
    conv2 3x3 (c1 -> c2), tanh, 2x2 average pool         14x14 -> 7x7     deformable in the deformable net
    conv3 3x3 (c2 -> c2), tanh                            7x7              deformable in the deformable net
    global average pool and linear (c2 -> 10)

A deformable layer predicts its offsets (and, for DCNv2, a sigmoid mask) with a 3x3 convolution of
its own input, as the paper's Figure 2 does, and calls the backend's op with torchvision's
signature. tanh and average pooling instead of ReLU and max pooling keep the loss a smooth
function of the weights: a float32 run then stays within roundoff of the float64 one over a
training run instead of flipping a max-pool choice or a ReLU and drifting by O(1) (measured: with
ReLU and max pooling the float32 PyTorch run's loss was 4e-2 off float64 after 40 steps, which
would hide any kernel error smaller than that).

Initial weights are drawn in float64 from a seeded generator (the convolutions first, then the
offset branches), so the plain and the deformable net start from the same convolution weights,
and every backend starts from exactly the same numbers rounded to its dtype. The offset branches'
biases are drawn from [-jitter, jitter] pixels: with jitter > 0 no sampling point starts on an
integer coordinate, where the bilinear kernel has a kink and implementations may legitimately
return different one-sided derivatives (DCN.md); jitter 0 starts the deformable net as the plain one.

The scaled-digits net (ScaleNet, `--experiment scaled-digits`) has the shape of the source of the
seeds' table (Felix Lau's Keras deform-conv, `deform_conv/cnn.py`): four 3x3 convolutions, each
followed by ReLU and batch norm, global average pooling and a linear classifier,

    conv11 1 -> w, stride 1      28x28
    conv12 w -> 2w, stride 2     14x14    deformable in the deformable net
    conv21 2w -> 4w, stride 1    14x14    deformable
    conv22 4w -> 4w, stride 2    7x7      deformable
    global average pool, linear 4w -> 10

(Lau's w is 32). Global pooling makes the classifier indifferent to where on the map a feature
fires, which a shifted digit needs. Its offset branches start at zero (weights and bias), so the
deformable net made from a trained plain one computes exactly what the plain one does until the
offsets move (a DCNv2 net doubles the convolution weights instead, since its masks start at 0.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES = 10
TAPS = 9  # 3x3 kernels


@dataclass(frozen=True)
class NetConfig:
    deformable: bool = True
    dcn: str = "v1"  # "v1": offsets only; "v2": offsets and a mask
    c1: int = 8
    c2: int = 16
    jitter: float = 0.5  # offset branch bias drawn from [-jitter, jitter] pixels

    def deform_geometries(self, batch: int) -> list[tuple[int, int, int, int]]:
        """(N, C, H, W -> O) of each deformable layer's call: (batch, c_in, size, c_out)."""
        return [(batch, self.c1, 14, self.c2), (batch, self.c2, 7, self.c2)] if self.deformable else []


class DeformConv(nn.Module):
    """A 3x3, padding 1 deformable convolution whose kernel is `op` (torchvision's signature); its
    offset branch, a 3x3 convolution of the same stride, gives an offset per output position."""

    def __init__(self, c_in: int, c_out: int, dcn: str, op: Callable, stride: int = 1):
        super().__init__()
        self.op, self.dcn, self.stride = op, dcn, stride
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3, dtype=torch.float64))
        self.bias = nn.Parameter(torch.empty(c_out, dtype=torch.float64))
        self.offset = nn.Conv2d(c_in, (3 if dcn == "v2" else 2) * TAPS, 3, stride=stride, padding=1, dtype=torch.float64)
        self.reset_parameters()

    # torch's default initialisation of a convolution's weight and bias (it reads only those two), so a
    # net built from scratch starts from the seed like its plain layers; build() and
    # build_scale_net(start=...) load other weights over it.
    reset_parameters = nn.Conv2d.reset_parameters

    def sampling(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The offsets (N, 18, H, W) and the mask (N, 9, H, W) or None that this layer uses on x."""
        raw = self.offset(x)
        if self.dcn != "v2":
            return raw, None
        offset, mask = raw.split([2 * TAPS, TAPS], dim=1)
        return offset, torch.sigmoid(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.sampling(x)
        return self.op(x, offset, self.weight, self.bias, (self.stride, self.stride), (1, 1), (1, 1), mask)


class DigitNet(nn.Module):
    def __init__(self, config: NetConfig, op: Callable | None = None):
        super().__init__()
        if config.deformable and op is None:
            raise ValueError("a deformable net needs a deform_conv2d op")
        self.config = config
        self.conv1 = nn.Conv2d(1, config.c1, 3, padding=1, dtype=torch.float64)
        if config.deformable:
            self.conv2 = DeformConv(config.c1, config.c2, config.dcn, op)
            self.conv3 = DeformConv(config.c2, config.c2, config.dcn, op)
        else:
            self.conv2 = nn.Conv2d(config.c1, config.c2, 3, padding=1, dtype=torch.float64)
            self.conv3 = nn.Conv2d(config.c2, config.c2, 3, padding=1, dtype=torch.float64)
        self.fc = nn.Linear(config.c2, CLASSES, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        return self.fc(torch.tanh(self.conv3(x)).mean(dim=(2, 3)))

    def deformable_layers(self) -> list[DeformConv]:
        return [m for m in (self.conv2, self.conv3) if isinstance(m, DeformConv)]


def _lecun(shape: tuple[int, ...], fan_in: int, generator: torch.Generator, gain: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64) * (gain / fan_in ** 0.5)


def initial_state(config: NetConfig, seed: int) -> dict[str, torch.Tensor]:
    """The net's initial weights (float64), by name, drawn from `seed` in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    c1, c2 = config.c1, config.c2
    state = {}
    for name, (c_in, c_out) in (("conv1", (1, c1)), ("conv2", (c1, c2)), ("conv3", (c2, c2))):
        state[f"{name}.weight"] = _lecun((c_out, c_in, 3, 3), c_in * TAPS, g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c_out, generator=g, dtype=torch.float64)
    state["fc.weight"] = _lecun((CLASSES, config.c2), config.c2, g)
    state["fc.bias"] = torch.zeros(CLASSES, dtype=torch.float64)
    if config.deformable:
        width = (3 if config.dcn == "v2" else 2) * TAPS
        for name, c_in in (("conv2", c1), ("conv3", c2)):
            state[f"{name}.offset.weight"] = _lecun((width, c_in, 3, 3), c_in * TAPS, g, gain=0.1)
            bias = config.jitter * (2 * torch.rand(width, generator=g, dtype=torch.float64) - 1)
            if config.dcn == "v2":
                bias[2 * TAPS:] = 0.0  # masks start at sigmoid(0) = 0.5, as MSRA's DCNv2 does
            state[f"{name}.offset.bias"] = bias
    return state


def build(config: NetConfig, *, op: Callable | None, seed: int, dtype: torch.dtype, device: str = "cpu") -> DigitNet:
    """The net with its seeded initial weights, in `dtype` on `device`."""
    with torch.random.fork_rng(devices=[]):  # the layers' own default init must not move the global RNG
        net = DigitNet(config, op)
    net.load_state_dict(initial_state(config, seed))
    return net.to(device=device, dtype=dtype)


def flat_weights(net: nn.Module) -> torch.Tensor:
    """Every parameter in one float64 vector (a copy), in a fixed order."""
    return torch.cat([p.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for p in net.parameters()])


# ---- the scaled-digits net ----------------------------------------------------------------------

# Lau's layers: (output channels as a multiple of the width, stride); all but the first deformable.
SCALE_LAYERS = ((1, 1), (2, 2), (4, 1), (4, 2))


@dataclass(frozen=True)
class ScaleNetConfig:
    deformable: bool = True
    dcn: str = "v1"
    width: int = 16  # conv11's channels (Lau's: 32)


class ScaleBlock(nn.Module):
    """A 3x3 convolution (plain or deformable), ReLU, batch norm: one of Lau's layers."""

    def __init__(self, c_in: int, c_out: int, stride: int, deformable: bool, dcn: str, op: Callable | None):
        super().__init__()
        self.conv = (DeformConv(c_in, c_out, dcn, op, stride) if deformable
                     else nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, dtype=torch.float64))
        # Keras' epsilon; torch's momentum (Keras' 0.99 averages over ~100 steps: longer than a
        # short run on 1,198 digits, whose test-time statistics would still carry the initial ones).
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class ScaleNet(nn.Module):
    def __init__(self, config: ScaleNetConfig, op: Callable | None = None):
        super().__init__()
        if config.deformable and op is None:
            raise ValueError("a deformable net needs a deform_conv2d op")
        self.config = config
        channels = [1] + [k * config.width for k, _ in SCALE_LAYERS]
        self.blocks = nn.ModuleList(ScaleBlock(channels[i], channels[i + 1], stride, config.deformable and i > 0,
                                               config.dcn, op) for i, (_, stride) in enumerate(SCALE_LAYERS))
        self.fc = nn.Linear(channels[-1], CLASSES, dtype=torch.float64)

    def block_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What each block reads (the image first)."""
        found = [x]
        for block in self.blocks[:-1]:
            found.append(block(found[-1]))
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    def deformable_layers(self) -> list[DeformConv]:
        return [b.conv for b in self.blocks if isinstance(b.conv, DeformConv)]

    def offset_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.deformable_layers() for p in layer.offset.parameters()]

    def norm_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.bn.parameters()]


def build_scale_net(config: ScaleNetConfig, *, op: Callable | None, seed: int, dtype: torch.dtype,
                    device: str = "cpu", start: ScaleNet | None = None) -> ScaleNet:
    """The net with torch's default initialisation drawn from `seed`, or, with `start`, the trained
    plain net's weights and zero offsets: the deformable net then starts as the plain one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ScaleNet(config, op)
    for layer in net.deformable_layers():
        nn.init.zeros_(layer.offset.weight)
        nn.init.zeros_(layer.offset.bias)  # DCNv2's masks at sigmoid(0) = 0.5, as MSRA's
    if start is not None:
        state = {k: v.detach().to(torch.float64) for k, v in start.state_dict().items()}
        if config.dcn == "v2":
            for i, layer in enumerate(net.blocks):
                if isinstance(layer.conv, DeformConv):
                    state[f"blocks.{i}.conv.weight"] = 2 * state[f"blocks.{i}.conv.weight"]
        missing = net.load_state_dict(state, strict=False).missing_keys
        if any(".offset." not in k for k in missing):
            raise ValueError(f"the plain net lacks {missing}")
    return net.to(device=device, dtype=dtype)

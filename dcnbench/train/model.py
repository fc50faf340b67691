"""The small network `dcnbench train` trains: plain or deformable, with any backend's deform_conv2d.

    conv1 3x3 (1 -> c1), tanh, 2x2 average pool          28x28 -> 14x14
    conv2 3x3 (c1 -> c2), tanh, 2x2 average pool         14x14 -> 7x7     deformable in the deformable net
    conv3 3x3 (c2 -> c2), tanh                            7x7              deformable in the deformable net
    global average pool and linear (c2 -> 10), or (head "flatten") linear (c2*49 -> 10)

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
    # "mean": global average pooling before the classifier; "flatten": the whole 7x7 map (the
    # experiment: learns the 1200 digits in a few epochs where global pooling needs many more).
    head: str = "mean"

    @property
    def features(self) -> int:
        """What the classifier reads: c2 means, or the whole c2 x 7 x 7 map."""
        return self.c2 if self.head == "mean" else self.c2 * 49

    def deform_geometries(self, batch: int) -> list[tuple[int, int, int, int]]:
        """(N, C, H, W -> O) of each deformable layer's call: (batch, c_in, size, c_out)."""
        return [(batch, self.c1, 14, self.c2), (batch, self.c2, 7, self.c2)] if self.deformable else []


class DeformConv(nn.Module):
    """A 3x3, padding 1 deformable convolution whose kernel is `op` (torchvision's signature)."""

    def __init__(self, c_in: int, c_out: int, dcn: str, op: Callable):
        super().__init__()
        self.op, self.dcn = op, dcn
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3, dtype=torch.float64))
        self.bias = nn.Parameter(torch.empty(c_out, dtype=torch.float64))
        self.offset = nn.Conv2d(c_in, (3 if dcn == "v2" else 2) * TAPS, 3, padding=1, dtype=torch.float64)

    def sampling(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The offsets (N, 18, H, W) and the mask (N, 9, H, W) or None that this layer uses on x."""
        raw = self.offset(x)
        if self.dcn != "v2":
            return raw, None
        offset, mask = raw.split([2 * TAPS, TAPS], dim=1)
        return offset, torch.sigmoid(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.sampling(x)
        return self.op(x, offset, self.weight, self.bias, (1, 1), (1, 1), (1, 1), mask)


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
        self.fc = nn.Linear(config.features, CLASSES, dtype=torch.float64)

    def layer_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What conv2 (14x14) and conv3 (7x7) read, and conv3's activation before pooling."""
        x2 = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x3 = F.avg_pool2d(torch.tanh(self.conv2(x2)), 2)
        return x2, x3, torch.tanh(self.conv3(x3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layer_inputs(x)[2]
        return self.fc(features.mean(dim=(2, 3)) if self.config.head == "mean" else features.flatten(1))

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
    state["fc.weight"] = _lecun((CLASSES, config.features), config.features, g)
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

"""Where a deformable net samples for one activation unit: the paper's Figure 5, for the scaled-digits net.

Deformable ConvNets' Figure 5 draws, for one unit of the top layer, the 9^3 = 729 points that three
stacked 3x3 deformable layers read on the image: the unit's layer samples 9 points on its input
map, each of those is an output of the layer below, which samples 9 of its own, and so on. A 3x3,
padding 1 layer of stride s whose output at p has offsets d_k(p) (tap k, in its input's pixels)
reads its input at s * p + k + d_k(p), k in {-1, 0, 1}^2; a point between outputs takes the
offsets interpolated bilinearly (as the bilinear kernel does for the features). With zero offsets
the same walk gives the regular receptive field.

ScaleNet's deformable layers are its last three, on top of a stride-1 layer, so the first of them
reads a map on the image's own pixel grid: the walk ends in image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dcnbench.train.model import DeformConv, ScaleNet

_TAPS = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64)  # row-major, as the offsets


@dataclass(frozen=True)
class OffsetPanel:
    """One activation unit of one digit: the image, where the unit samples with its learned offsets
    and with zero offsets (both (729, 2) as (y, x) image pixels), and the unit's own pixel."""

    title: str
    image: np.ndarray
    learned: np.ndarray
    regular: np.ndarray
    unit: tuple[float, float]

    def record(self) -> dict:
        return {"title": self.title, "unit": list(self.unit), "spread_learned": spread(self.learned),
                "spread_regular": spread(self.regular)}


def spread(points: np.ndarray) -> float:
    """How far (P, 2) points lie from their centroid: the root mean square distance, in pixels."""
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _walk(field: np.ndarray, stride: int, points: np.ndarray) -> np.ndarray:
    """The 9 input points each of `points` (P, 2) reads through a layer with offsets `field` (18, H, W)."""
    from scipy.ndimage import map_coordinates

    d = np.stack([map_coordinates(channel, points.T, order=1, mode="nearest") for channel in field])
    d = d.reshape(9, 2, len(points)).transpose(2, 0, 1)  # (P, tap, (dy, dx))
    return (stride * points[:, None, :] + _TAPS[None] + d).reshape(-1, 2)


@torch.no_grad()
def sampling_points(net: ScaleNet, image: torch.Tensor, unit: tuple[int, int], learned: bool = True) -> np.ndarray:
    """(9^k, 2) image pixels (y, x) where the top block's output `unit` samples through the net's k
    deformable layers (zero offsets with learned=False)."""
    was_training = net.training
    net.eval()
    inputs = net.block_inputs(image[None])
    net.train(was_training)
    layers = [(b.conv, x) for b, x in zip(net.blocks, inputs) if isinstance(b.conv, DeformConv)]
    if [b.conv for b in net.blocks[-len(layers):]] != [conv for conv, _ in layers] or net.blocks[0].conv.stride != (1, 1):
        raise ValueError("the walk needs the deformable layers on top of one stride-1 plain layer")
    points = np.array([unit], dtype=np.float64)
    for conv, x in reversed(layers):
        field = conv.sampling(x)[0][0, :18].double().cpu().numpy()
        points = _walk(field if learned else np.zeros_like(field), conv.stride, points)
    return points


def ink_unit(image: np.ndarray, size: int) -> tuple[int, int]:
    """The top map's unit (of `size` x `size`) nearest the image's ink centroid."""
    ys, xs = np.indices(image.shape)
    total = image.sum()
    stride = image.shape[0] // size  # the net's total stride (4): unit u sits at pixel stride * u
    return tuple(int(np.clip(round(float((c * image).sum() / total) / stride), 0, size - 1)) for c in (ys, xs))


def background_unit(image: np.ndarray, size: int) -> tuple[int, int]:
    """An inner unit (not on the map's border) as far from the ink centroid as there is."""
    cy, cx = ink_unit(image, size)
    inner = [(y, x) for y in range(1, size - 1) for x in range(1, size - 1)]
    return max(inner, key=lambda u: ((u[0] - cy) ** 2 + (u[1] - cx) ** 2, -u[0], -u[1]))


def panels(net: ScaleNet, images: list[tuple[str, torch.Tensor]], size: int = 7) -> list[OffsetPanel]:
    """For each (label, image (1, H, W)): the unit on the digit's ink and one on its background."""
    found = []
    param = next(net.parameters())
    for label, image in images:
        x = image.to(device=param.device, dtype=param.dtype)
        picture = image[0].double().cpu().numpy()
        for where, unit in (("on the digit", ink_unit(picture, size)), ("on the background", background_unit(picture, size))):
            regular = sampling_points(net, x, unit, learned=False)
            found.append(OffsetPanel(title=f"{label}\nunit {unit} {where}", image=picture,
                                     learned=sampling_points(net, x, unit), regular=regular,
                                     unit=tuple(float(v) for v in regular.mean(axis=0))))
    return found

"""The digits `dcnbench train` learns: scikit-learn's bundled 8x8 digits, upsampled, and a scaled copy.

Nothing is downloaded: `sklearn.datasets.load_digits` reads the 1797 images its wheel ships. Each
8x8 image (values 0..16) is scaled to [0, 1], upsampled bilinearly to 20x20 and padded to 28x28,
so a digit sits in MNIST's frame (a 20-pixel box, 4 pixels of margin).

The scaled set follows the generator behind the scaled-MNIST table the seeds quote (Felix Lau's
deform-conv, `scripts/scaled_mnist.py`: Keras `ImageDataGenerator(zoom_range=(1.0, 2.5),
width_shift_range=0.2, height_shift_range=0.2)`), as Keras draws and applies it: two zoom factors
per image, one per axis, each uniform in [1, 2.5], and a shift per axis uniform in +-20 % of the
frame; each output pixel o reads the input at c + t + zoom * (o - c) (c the frame's centre, t the
shift), so the digit shrinks to 40-100 % of its size along each axis and moves by t / zoom. (Keras
takes its centre half a pixel off the frame's; that half pixel is left out.) Every draw comes from
a `torch.Generator` seeded by `seed`: the same seed gives the same split, batches and scaled
digits on every machine and for every backend.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIZE = 28  # the frame, as MNIST's
BOX = 20  # the digit's box inside it
ZOOM = (1.0, 2.5)  # the scaled set's zoom-out range (the digit shrinks by 1/zoom)
SHIFT = 0.2  # the scaled set's largest shift, as a fraction of the frame
TEST_FRACTION = 1 / 3


@dataclass(frozen=True)
class Digits:
    """Images (N, 1, 28, 28) float64 in [0, 1] and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> Digits:
        return Digits(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Split:
    train: Digits
    test: Digits


@functools.cache
def load() -> Digits:
    """All 1797 digits, upsampled to 28x28 (float64); one copy per process, not to be modified."""
    from sklearn.datasets import load_digits

    found = load_digits()
    x = torch.as_tensor(found.images, dtype=torch.float64)[:, None] / 16.0
    x = F.interpolate(x, size=(BOX, BOX), mode="bilinear", align_corners=False)
    pad = (SIZE - BOX) // 2
    return Digits(F.pad(x, (pad, pad, pad, pad)).clamp_(0.0, 1.0), torch.as_tensor(found.target, dtype=torch.int64))


def split(digits: Digits, seed: int) -> Split:
    """A fixed train/test split (a third for testing), drawn from `seed`."""
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(digits) * TEST_FRACTION)
    return Split(train=digits.take(order[n_test:]), test=digits.take(order[:n_test]))


def rescale(images: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image zoomed out about the frame's centre by zoom[i] = (zoom_y, zoom_x) and shifted by
    shift[i] = (ty, tx) (fractions of the frame, in the input's coordinates: the digit moves by
    shift / zoom), as Keras' ImageDataGenerator does; zeros come in from outside. zoom 1 and shift
    0 give the image back."""
    n = images.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=images.dtype)
    # affine_grid's rows are (x, y) in [-1, 1]: output position u reads the input at zoom * u + 2 * shift.
    theta[:, 0, 0] = zoom[:, 1]
    theta[:, 1, 1] = zoom[:, 0]
    theta[:, 0, 2] = 2.0 * shift[:, 1]
    theta[:, 1, 2] = 2.0 * shift[:, 0]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def draw_scales(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n zoom pairs (y, x), each factor in ZOOM, and n shift pairs (y, x) in [-SHIFT, SHIFT]."""
    zoom = ZOOM[0] + (ZOOM[1] - ZOOM[0]) * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    shift = SHIFT * (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1)
    return zoom, shift


def scaled(digits: Digits, seed: int) -> Digits:
    """The scaled copy of `digits`: each digit zoomed out and shifted by its own random draw."""
    zoom, shift = draw_scales(len(digits), torch.Generator().manual_seed(seed))
    return Digits(rescale(digits.images, zoom, shift), digits.labels)


def batches(digits: Digits, *, batch: int, steps: int, seed: int):
    """`steps` batches of `batch` digits: a fresh permutation from `seed` each epoch, the last
    incomplete batch of an epoch dropped (every batch has the same shape)."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(digits) // batch
    if per_epoch == 0:
        raise ValueError(f"a batch of {batch} is larger than the {len(digits)} training digits")
    order = torch.randperm(len(digits), generator=generator)
    for step in range(steps):
        k = step % per_epoch
        if k == 0 and step:
            order = torch.randperm(len(digits), generator=generator)
        yield digits.take(order[k * batch:(k + 1) * batch])

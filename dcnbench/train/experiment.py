"""`dcnbench train --experiment scaled-digits`: the toy behind the seeds' table, on scikit-learn's digits.

The seeds quote (000_*, "Understanding Deformable ConvNets"):

    Test Accuracy   Regular CNN   Deformable CNN
    Regular MNIST   98.74%        97.27%
    Scaled MNIST    57.01%        92.55%

That table comes from Felix Lau's Keras deform-conv (README and `scripts/scaled_mnist.py`), whose
protocol is: train a plain 4-layer CNN on regular MNIST; then swap in deformable layers, freeze
every weight but the offset branches and fine-tune those on scale-augmented training images. The
issue asks for both networks trained on regular digits. Both protocols run here, so the table
has three measured columns:

- plain CNN, trained on regular digits;
- deformable CNN, trained from scratch on the same regular digits and batches (the issue's);
- deformable CNN made from the trained plain CNN (its weights, offset branches starting near
  zero), only the offset branches fine-tuned on scale-augmented training digits (the source's).

All three are tested on the regular test digits and on their scaled copy (data.py). Figure: where
the two deformable layers sample for a few activation units of one test digit, regular and scaled
(the paper's Figure 5: 9 x 9 = 81 points per unit through two 3x3 deformable layers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dcnbench.ops.case import DTYPES
from dcnbench.train import data, model, trainer

# The seeds' table, in percent: (regular CNN, deformable CNN).
SEEDS_TABLE = {"regular": (98.74, 97.27), "scaled": (57.01, 92.55)}
# conv3 units (row, col on its 7x7 map) whose sampling points the figure shows.
UNITS = ((3, 3), (2, 4), (5, 2))


@dataclass(frozen=True)
class ExperimentSettings:
    backend: str = "ext"
    dcn: str = "v1"
    epochs: int = 6
    finetune_epochs: int = 4
    batch: int = 32
    lr: float = 0.01  # Adam's, as the source trained with Adam
    seed: int = 0
    c1: int = 8
    c2: int = 16
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class Accuracy:
    regular: float
    scaled: float


@dataclass(frozen=True)
class OffsetPanel:
    """One activation unit of one digit: the image, where the unit samples with its learned offsets
    and with zero offsets (both (81, 2) as (y, x) image pixels), and the unit's own position."""

    title: str
    image: np.ndarray
    learned: np.ndarray
    regular: np.ndarray
    unit: tuple[float, float]


@dataclass(frozen=True)
class ExperimentResult:
    settings: ExperimentSettings
    plain: Accuracy
    deformable: Accuracy
    finetuned: Accuracy
    seconds: dict[str, float]
    panels: tuple[OffsetPanel, ...]
    train_size: int
    test_size: int

    @staticmethod
    def columns() -> list[str]:
        return ["plain CNN", "deformable CNN (trained on regular)", "deformable CNN (offsets fine-tuned on scaled)",
                "seeds' table: regular CNN", "seeds' table: deformable CNN"]

    def rows(self) -> list[list[str]]:
        found = []
        for name, pick in (("regular", lambda a: a.regular), ("scaled", lambda a: a.scaled)):
            found.append([f"{name} digits"] + [f"{100 * pick(a):.2f} %" for a in (self.plain, self.deformable, self.finetuned)]
                         + [f"{v:.2f} %" for v in SEEDS_TABLE[name]])
        return found

    def markdown(self) -> str:
        lines = ["| test accuracy | " + " | ".join(self.columns()) + " |", "|---" * (1 + len(self.columns())) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines)


def _epochs(digits: data.Digits, settings: ExperimentSettings, epochs: int, seed: int):
    return data.batches(digits, batch=settings.batch, steps=epochs * (len(digits) // settings.batch), seed=seed)


def _scaled_epochs(digits: data.Digits, settings: ExperimentSettings, epochs: int):
    """Scale-augmented training digits: a fresh draw of factors every epoch (seeds apart from the test set's)."""
    for epoch in range(epochs):
        augmented = data.scaled(digits, seed=settings.seed + 1000 + epoch)
        yield from data.batches(augmented, batch=settings.batch, steps=len(digits) // settings.batch,
                                seed=settings.seed + epoch)


def _fit(net, batches, settings: ExperimentSettings, trainable=None, on_step=None) -> float:
    t0 = time.perf_counter()
    for _ in trainer.steps(net, batches, lr=settings.lr, adam=True, dtype=DTYPES[settings.dtype],
                           device=settings.device, trainable=trainable):
        if on_step:
            on_step()
    return time.perf_counter() - t0


def _accuracy(net, test: data.Digits, scaled: data.Digits, settings: ExperimentSettings) -> Accuracy:
    dtype = DTYPES[settings.dtype]
    return Accuracy(trainer.accuracy(net, test, dtype=dtype, device=settings.device),
                    trainer.accuracy(net, scaled, dtype=dtype, device=settings.device))


def total_steps(settings: ExperimentSettings) -> int:
    """Training steps the experiment takes (for a progress bar)."""
    per_epoch = len(data.split(data.load(), settings.seed).train) // settings.batch
    return per_epoch * (2 * settings.epochs + settings.finetune_epochs)


def run_experiment(*, op: Callable, settings: ExperimentSettings, on_step: Callable[[], None] | None = None) -> ExperimentResult:
    s = settings
    parts = data.split(data.load(), s.seed)
    test_scaled = data.scaled(parts.test, s.seed)
    dtype = DTYPES[s.dtype]
    seconds = {}

    plain = model.build(model.NetConfig(deformable=False, c1=s.c1, c2=s.c2, head="flatten"), op=None, seed=s.seed, dtype=dtype, device=s.device)
    seconds["plain"] = _fit(plain, _epochs(parts.train, s, s.epochs, s.seed), s, on_step=on_step)

    deform_config = model.NetConfig(deformable=True, dcn=s.dcn, c1=s.c1, c2=s.c2, jitter=0.0, head="flatten")
    scratch = model.build(deform_config, op=op, seed=s.seed, dtype=dtype, device=s.device)
    seconds["deformable"] = _fit(scratch, _epochs(parts.train, s, s.epochs, s.seed), s, on_step=on_step)

    finetuned = model.build(deform_config, op=op, seed=s.seed, dtype=dtype, device=s.device)
    finetuned.load_state_dict(plain.state_dict(), strict=False)  # every weight but the offset branches
    offsets = [p for layer in finetuned.deformable_layers() for p in layer.offset.parameters()]
    seconds["finetuned"] = _fit(finetuned, _scaled_epochs(parts.train, s, s.finetune_epochs), s, trainable=offsets,
                                on_step=on_step)

    return ExperimentResult(settings=s, plain=_accuracy(plain, parts.test, test_scaled, s),
                            deformable=_accuracy(scratch, parts.test, test_scaled, s),
                            finetuned=_accuracy(finetuned, parts.test, test_scaled, s), seconds=seconds,
                            panels=tuple(offset_panels(finetuned, parts.test, test_scaled, s)),
                            train_size=len(parts.train), test_size=len(parts.test))


# ---- where the deformable layers sample (the paper's Figure 5) ------------------------------------------------

_TAPS = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64)  # row-major, as the offsets


def _taps(offset: np.ndarray, y: float, x: float) -> np.ndarray:
    """The 9 points (y, x) on its input map that a 3x3, padding 1 deformable layer samples for its
    output at (y, x); between outputs, the offsets are interpolated bilinearly (clamped at the edge)."""
    from scipy.ndimage import map_coordinates

    d = np.array([map_coordinates(channel, [[y], [x]], order=1, mode="nearest")[0] for channel in offset])
    return np.array([y, x], dtype=np.float64) + _TAPS + d.reshape(9, 2)  # (dy, dx) per tap, row-major


def _pooled_to_fine(p: np.ndarray) -> np.ndarray:
    """A point on a 2x2-average-pooled map, on the map before pooling (cell q covers 2q and 2q + 1)."""
    return 2 * p + 0.5


@torch.no_grad()
def sampling_points(net: model.DigitNet, image: torch.Tensor, unit: tuple[int, int], learned: bool = True) -> np.ndarray:
    """(81, 2) image pixels (y, x) where conv3's output `unit` samples through conv3 and conv2: each of
    conv3's 9 points, taken back through the pooling, is where conv2 samples its own 9."""
    net.eval()
    x2, x3, _ = net.layer_inputs(image[None])
    off2 = net.conv2.sampling(x2)[0][0].double().cpu().numpy()
    off3 = net.conv3.sampling(x3)[0][0].double().cpu().numpy()
    if not learned:
        off2, off3 = np.zeros_like(off2), np.zeros_like(off3)
    points = [_pooled_to_fine(_taps(off2, *_pooled_to_fine(p3))) for p3 in _taps(off3, *unit)]
    return np.concatenate(points)


def offset_panels(net: model.DigitNet, test: data.Digits, test_scaled: data.Digits,
                  settings: ExperimentSettings) -> list[OffsetPanel]:
    """For the first test digit that the scaled set shrank most among the first 50: each UNIT, regular and scaled."""
    zoom, _ = data.draw_scales(len(test), torch.Generator().manual_seed(settings.seed))
    index = int(torch.argmax(zoom[:50]))
    dtype = DTYPES[settings.dtype]
    panels = []
    for label, digits in (("regular", test), (f"scaled (zoom-out {float(zoom[index]):.2f})", test_scaled)):
        image = digits.images[index].to(device=settings.device, dtype=dtype)
        for unit in UNITS:
            panels.append(OffsetPanel(
                title=f"digit {int(digits.labels[index])}, {label}, unit {unit}", image=digits.images[index, 0].numpy(),
                learned=sampling_points(net, image, unit), regular=sampling_points(net, image, unit, learned=False),
                unit=tuple(float(v) for v in _pooled_to_fine(_pooled_to_fine(np.array(unit, dtype=np.float64))))))
    return panels

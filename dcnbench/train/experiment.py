"""`dcnbench train --experiment scaled-digits`: the toy behind the seeds' table, on scikit-learn's digits.

The seeds quote (000_*, "Understanding Deformable ConvNets"):

    Test Accuracy   Regular CNN   Deformable CNN
    Regular MNIST   98.74%        97.27%
    Scaled MNIST    57.01%        92.55%

That table comes from Felix Lau's Keras deform-conv (README, `scripts/scaled_mnist.py`), whose
protocol this follows: train a plain CNN (model.ScaleNet: four conv/ReLU/batch-norm layers, global
average pooling) on regular digits with Adam; make the deformable net from it (its weights, the
last three convolutions deformable, offset branches starting at zero: at the start it is the plain
net); freeze the convolutions and the classifier and fine-tune the offset branches, with the
batch norms (Lau freezes neither their scale and shift nor their running statistics), on
scale-augmented training digits drawn afresh every epoch, with Adam at half the learning rate.
Both nets are tested on the regular test digits and on their scaled copy (data.py).

One more column is always measured, because the deformable net's fine-tuning trains the batch
norms too: the control, the plain CNN fine-tuned the same way (batch norms only, same data, same
steps), which shows how much of the gain the offsets bring. `ablations` adds two columns the
source does not have: a deformable net trained from scratch on regular digits only (the issue's
reading: does deformable convolution alone generalise to scale? not without scaled data) and a
plain CNN trained on scale-augmented digits with every weight free (what full training on the
augmented data reaches).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from dcnbench.ops.case import DTYPES
from dcnbench.train import data, model, offsets, trainer

# The seeds' table, in percent: (regular CNN, deformable CNN).
SEEDS_TABLE = {"regular": (98.74, 97.27), "scaled": (57.01, 92.55)}
FINETUNE_LR_RATIO = 0.5  # Lau: Adam 1e-3 for the plain CNN, 5e-4 for the offsets
AUGMENT_SEED = 1000  # training epochs' scaled draws start here (the test set's is the seed itself)


@dataclass(frozen=True)
class ExperimentSettings:
    backend: str = "ext"
    dcn: str = "v1"
    width: int = 16
    epochs: int = 6
    finetune_epochs: int = 3
    batch: int = 32
    lr: float = 1e-3  # Adam's, as the source's
    seed: int = 0
    ablations: bool = False
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def finetune_lr(self) -> float:
        return self.lr * FINETUNE_LR_RATIO

    def describe(self) -> str:
        return (f"backend {self.backend}, DCN{self.dcn}, width {self.width} (channels {self.width}/{2 * self.width}/"
                f"{4 * self.width}/{4 * self.width}), batch {self.batch}, Adam lr {self.lr:g} for {self.epochs} epochs, "
                f"fine-tuning lr {self.finetune_lr:g} for {self.finetune_epochs} epochs, seed {self.seed}, {self.dtype}")


@dataclass(frozen=True)
class Accuracy:
    regular: float
    scaled: float


@dataclass(frozen=True)
class Phase:
    """One trained net: its label, the training loss at each step, the test accuracy after each
    epoch (the last is the net's result) and the wall and CPU seconds its training took."""

    key: str
    label: str
    losses: tuple[float, ...]
    epochs: tuple[Accuracy, ...]
    wall_s: float
    cpu_s: float
    starts_from: str | None = None  # the phase whose trained net it starts from

    @property
    def accuracy(self) -> Accuracy:
        return self.epochs[-1]


@dataclass(frozen=True)
class ExperimentResult:
    settings: ExperimentSettings
    phases: tuple[Phase, ...]
    panels: tuple[offsets.OffsetPanel, ...]
    train_size: int
    test_size: int

    def phase(self, key: str) -> Phase:
        return next(p for p in self.phases if p.key == key)

    def columns(self) -> list[str]:
        return [p.label for p in self.phases] + ["seeds' table: regular CNN", "seeds' table: deformable CNN"]

    def rows(self) -> list[list[str]]:
        found = []
        for name in ("regular", "scaled"):
            found.append([f"{name} digits"] + [f"{100 * getattr(p.accuracy, name):.2f} %" for p in self.phases]
                         + [f"{v:.2f} %" for v in SEEDS_TABLE[name]])
        return found

    def markdown(self) -> str:
        lines = ["| test accuracy | " + " | ".join(self.columns()) + " |", "|---" * (1 + len(self.columns())) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines)

    def record(self) -> dict:
        """The JSON record's data: settings, each phase's accuracy, curves and seconds."""
        return {"settings": vars(self.settings) | {"finetune_lr": self.settings.finetune_lr},
                "train_size": self.train_size, "test_size": self.test_size, "seeds_table": SEEDS_TABLE,
                "phases": [{"key": p.key, "label": p.label, "starts_from": p.starts_from, "accuracy": vars(p.accuracy),
                            "epochs": [vars(a) for a in p.epochs], "losses": list(p.losses), "wall_s": p.wall_s,
                            "cpu_s": p.cpu_s} for p in self.phases],
                "offset_panels": [panel.record() for panel in self.panels]}


# ---- training -------------------------------------------------------------------------------------------------


def _regular_epoch(train: data.Digits, s: ExperimentSettings, epoch: int) -> Iterator[data.Digits]:
    return data.batches(train, batch=s.batch, steps=len(train) // s.batch, seed=s.seed + epoch)


def _scaled_epoch(train: data.Digits, s: ExperimentSettings, epoch: int) -> Iterator[data.Digits]:
    """The training digits scaled afresh (a new draw every epoch, as Keras' generator gives)."""
    augmented = data.scaled(train, seed=s.seed + AUGMENT_SEED + epoch)
    return data.batches(augmented, batch=s.batch, steps=len(train) // s.batch, seed=s.seed + epoch)


@dataclass(frozen=True)
class Plan:
    """How one net trains: on which epochs' batches, how long, at what rate, which weights."""

    key: str
    label: str
    net: model.ScaleNet
    epoch: Callable[[data.Digits, ExperimentSettings, int], Iterator[data.Digits]]
    epochs: int
    lr: float
    trainable: list[torch.nn.Parameter] | None = None  # None: every weight
    starts_from: str | None = None


def finetune_plan(key: str, label: str, net: model.ScaleNet, s: ExperimentSettings) -> Plan:
    """Lau's fine-tuning of a net made from the trained plain CNN: its offset branches (if any) and
    batch norms learn, on freshly scaled digits, at the fine-tuning rate; everything else is frozen."""
    return Plan(key, label, net, _scaled_epoch, s.finetune_epochs, s.finetune_lr,
                trainable=net.offset_parameters() + net.norm_parameters(), starts_from="plain")


def train_phase(plan: Plan, parts: data.Split, tests: tuple[data.Digits, data.Digits], s: ExperimentSettings,
                on_step: Callable[[], None] | None = None) -> Phase:
    """Trains plan.net, testing it on `tests` (regular, scaled) after each epoch."""
    dtype = DTYPES[s.dtype]
    per_epoch = len(parts.train) // s.batch
    batches = itertools.chain.from_iterable(plan.epoch(parts.train, s, e) for e in range(plan.epochs))
    if plan.trainable is not None:  # frozen weights need no gradient (the deformable kernels compute theirs anyway)
        keep = {id(p) for p in plan.trainable}
        for p in plan.net.parameters():
            p.requires_grad_(id(p) in keep)
    losses, epochs = [], []
    wall, cpu = time.perf_counter(), time.process_time()
    for step in trainer.steps(plan.net, batches, lr=plan.lr, adam=True, dtype=dtype, device=s.device,
                              trainable=plan.trainable):
        losses.append(step.loss)
        if on_step:
            on_step()
        if step.index % per_epoch == 0:
            epochs.append(Accuracy(*(trainer.accuracy(plan.net, t, dtype=dtype, device=s.device) for t in tests)))
    return Phase(key=plan.key, label=plan.label, losses=tuple(losses), epochs=tuple(epochs),
                 wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu, starts_from=plan.starts_from)


def total_steps(settings: ExperimentSettings) -> int:
    """Training steps the experiment takes (for a progress bar)."""
    s = settings
    per_epoch = len(data.split(data.load(), s.seed).train) // s.batch
    return per_epoch * (s.epochs + 2 * s.finetune_epochs + (2 * s.epochs if s.ablations else 0))


def run_experiment(*, op: Callable, settings: ExperimentSettings, on_step: Callable[[], None] | None = None) -> ExperimentResult:
    s = settings
    parts = data.split(data.load(), s.seed)
    tests = (parts.test, data.scaled(parts.test, s.seed))
    dtype = DTYPES[s.dtype]

    def net(deformable: bool, start: model.ScaleNet | None = None) -> model.ScaleNet:
        return model.build_scale_net(model.ScaleNetConfig(deformable=deformable, dcn=s.dcn, width=s.width),
                                     op=op if deformable else None, seed=s.seed, dtype=dtype, device=s.device, start=start)

    plain = net(False)
    phases = [train_phase(Plan("plain", "plain CNN", plain, _regular_epoch, s.epochs, s.lr), parts, tests, s, on_step)]
    deformable = net(True, start=plain)
    plans = [finetune_plan("deformable", "deformable CNN (offsets fine-tuned)", deformable, s),
             finetune_plan("control", "control (BN fine-tuned)", net(False, start=plain), s)]
    if s.ablations:
        plans += [Plan("deformable-regular", "deformable, trained on regular", net(True), _regular_epoch, s.epochs, s.lr),
                  Plan("plain-scaled", "plain, trained on scaled", net(False), _scaled_epoch, s.epochs, s.lr)]
    phases += [train_phase(plan, parts, tests, s, on_step) for plan in plans]
    return ExperimentResult(settings=s, phases=tuple(phases), panels=tuple(figure_panels(deformable, tests, s)),
                            train_size=len(parts.train), test_size=len(parts.test))


def figure_panels(net: model.ScaleNet, tests: tuple[data.Digits, data.Digits],
                  settings: ExperimentSettings) -> list[offsets.OffsetPanel]:
    """The paper's Figure 5 for one test digit, regular and scaled: the one among the first 50 that
    the scaled set shrank most (area), chosen before looking at what the net makes of it."""
    zoom, _ = data.draw_scales(len(tests[0]), torch.Generator().manual_seed(settings.seed))
    index = int(torch.argmax(zoom[:50].prod(dim=1)))
    images = []
    for name, digits in zip(("regular", f"scaled ({1 / float(zoom[index, 0]):.0%} x {1 / float(zoom[index, 1]):.0%})"), tests):
        image = digits.images[index]
        with torch.no_grad():
            net.eval()
            guess = int(net(image[None].to(device=settings.device, dtype=DTYPES[settings.dtype])).argmax())
        images.append((f"digit {int(digits.labels[index])} {name}, read as {guess}", image))
    return offsets.panels(net, images)

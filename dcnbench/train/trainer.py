"""One training run: SGD over fixed batches, the loss and the weights after every step, and the time
each step's three phases took (forward with the loss, backward, optimizer update).

A step's loss is the one its forward computed, before its update; the weights are those after it.
So a kernel whose forward is wrong shows in the loss of the step that called it, and one whose
gradient is wrong shows in the weights of that step (and in the losses after it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcnbench.train.data import Digits
from dcnbench.train.model import flat_weights


@dataclass(frozen=True)
class Step:
    index: int  # 1-based
    loss: float
    weights: torch.Tensor  # every parameter after the update, float64
    forward_ms: float
    backward_ms: float
    optimizer_ms: float


def _clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def steps(net: nn.Module, batches: Iterable[Digits], *, lr: float, momentum: float = 0.0, adam: bool = False,
          dtype: torch.dtype, device: str = "cpu", trainable: Iterable[nn.Parameter] | None = None) -> Iterator[Step]:
    """Train `net` on `batches` with SGD (or Adam), yielding each step as it ends. A parameter that
    gets no gradient (a kernel that drops one) is left as it is, as torch.optim does."""
    params = list(trainable) if trainable is not None else list(net.parameters())
    optimizer = torch.optim.Adam(params, lr=lr) if adam else torch.optim.SGD(params, lr=lr, momentum=momentum)
    net.train()
    for index, batch in enumerate(batches, start=1):
        x, y = batch.images.to(device=device, dtype=dtype), batch.labels.to(device)
        t0 = _clock(device)
        loss = F.cross_entropy(net(x), y)
        t1 = _clock(device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = _clock(device)
        optimizer.step()
        t3 = _clock(device)
        yield Step(index=index, loss=float(loss.detach()), weights=flat_weights(net), forward_ms=(t1 - t0) * 1e3,
                   backward_ms=(t2 - t1) * 1e3, optimizer_ms=(t3 - t2) * 1e3)


@torch.no_grad()
def accuracy(net: nn.Module, digits: Digits, *, dtype: torch.dtype, device: str = "cpu", batch: int = 256,
             on_batch: Callable[[], None] | None = None) -> float:
    """The fraction of `digits` the net classifies correctly (in eval mode: batch norm by its running
    statistics); the net is left in the mode it was in, so a training run can be measured between
    its steps."""
    was_training = net.training
    net.eval()
    right = 0
    for i in range(0, len(digits), batch):
        x = digits.images[i:i + batch].to(device=device, dtype=dtype)
        right += int((net(x).argmax(dim=1).cpu() == digits.labels[i:i + batch]).sum())
        if on_batch:
            on_batch()
    net.train(was_training)
    return right / len(digits)

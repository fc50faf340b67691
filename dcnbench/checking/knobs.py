"""Knobs: settings that must not change what a kernel computes (thread count, how a batch is
chunked). `verify --knobs` re-runs each case under every value of every knob a backend declares
(and the thread count, which every in-process backend has) and requires the results to agree with
the default run: within tolerance, and bitwise where the knob declares the backend bitwise-invariant.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str
    values: tuple  # the settings to try besides the default the run started with
    apply: Callable[[object], contextlib.AbstractContextManager]  # value -> context that sets it
    bitwise: bool = False  # results must be bitwise equal to the default run's, not merely close


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_knob(bitwise: bool = False) -> Knob:
    """torch's CPU thread count: one thread, and more than the machine's default where it has one."""
    import torch

    here = torch.get_num_threads()
    return Knob("threads", tuple(dict.fromkeys(v for v in (1, max(2, here * 2)) if v != here)), _threads, bitwise)


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """An environment variable set for the duration (kernels that read it per call see it)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def env_knob(name: str, variable: str, values: tuple[str, ...], bitwise: bool = False) -> Knob:
    return Knob(name, values, lambda value: environment(variable, value), bitwise)

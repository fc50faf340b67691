"""`ext-cuda-emu`: ext's CUDA kernels (csrc/cuda/*.cu) run on the CPU, for machines without a GPU.

The .cu files are compiled a second time by the host C++ compiler through csrc/emu/cuda_emu.h, which
stands in for the CUDA built-ins (blockIdx, threadIdx, ..., atomicAdd, the launch, the stream,
guard and launch check), into the op library `dcnbench_ext_emu` whose CUDA kernels are registered
for CPU tensors. The host code, the kernels and the Python wrappers are ext's own: only the
compiler differs. Both backward modes run, as on a GPU (DCNBENCH_EXT_DETERMINISTIC=1 or
torch.use_deterministic_algorithms(True) for the ordered kernels).

How the grid runs is set by environment variables, read at every launch (cuda_emu.h):
  DCNBENCH_EMU_MAX_BLOCKS=N      cap gridDim.x at N blocks (grid-stride loops must still cover all)
  DCNBENCH_EMU_ORDER=forward|reverse|shuffle, DCNBENCH_EMU_SEED=S   order of blocks and threads
  DCNBENCH_EMU_THREADS=N         run the blocks on N OS threads (round robin)
  DCNBENCH_EMU_SPLIT=block|thread  with THREADS: spread blocks (default) or the threads of each block
  DCNBENCH_EMU_SAMPLE_BLOCKS=N   run only the first N blocks of each launch (index-overflow spot checks)
A bad value is a usage error (exit 2). Not a default backend: name it (`--backend ext-cuda-emu`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dcnbench.backends import Backend
from dcnbench.backends.ext import build
from dcnbench.backends.ext.library import OpLibrary, check_environment, deterministic
from dcnbench.errors import UsageError

NAME = "ext-cuda-emu"
LIBRARY = OpLibrary(build.emulated)
ORDERS = ("forward", "reverse", "shuffle")
SPLITS = ("block", "thread")


@dataclass(frozen=True)
class Settings:
    max_blocks: int | None = None
    order: str = "forward"
    seed: int = 0
    threads: int = 1
    split: str = "block"
    sample_blocks: int | None = None

    def text(self) -> str:
        parts = [f"max_blocks={self.max_blocks}" if self.max_blocks else "",
                 f"order={self.order}" + (f" seed={self.seed}" if self.order == "shuffle" else ""),
                 f"threads={self.threads}" + (f" split={self.split}" if self.threads > 1 else ""),
                 f"sample_blocks={self.sample_blocks} (incomplete results)" if self.sample_blocks else ""]
        return ", ".join(p for p in parts if p)


def settings(environ=os.environ) -> Settings:
    """The DCNBENCH_EMU_* knobs, validated: a bad value is a UsageError naming the variable."""

    def integer(name: str, low: int) -> int | None:
        text = environ.get(name, "").strip()
        if not text:
            return None
        if not text.isdigit() or int(text) < low or int(text) > 2**31 - 1:
            raise UsageError(f"{name}={text!r} is not an integer from {low} to 2147483647",
                             hint=f"set {name} to such an integer, or unset it")
        return int(text)

    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        text = environ.get(name, "").strip() or default
        if text not in allowed:
            raise UsageError(f"{name}={text!r} is not one of {', '.join(allowed)}",
                             hint=f"set {name} to {' or '.join(allowed)}, or unset it")
        return text

    return Settings(max_blocks=integer("DCNBENCH_EMU_MAX_BLOCKS", 1), order=choice("DCNBENCH_EMU_ORDER", ORDERS, "forward"),
                    seed=integer("DCNBENCH_EMU_SEED", 0) or 0, threads=integer("DCNBENCH_EMU_THREADS", 1) or 1,
                    split=choice("DCNBENCH_EMU_SPLIT", SPLITS, "block"),
                    sample_blocks=integer("DCNBENCH_EMU_SAMPLE_BLOCKS", 1))


def mode(device: str) -> str:
    kind = "deterministic (per-channel accumulation)" if deterministic() else "atomicAdd accumulation"
    return f"{kind}, CUDA kernels emulated on the CPU ({settings().text()})"


def check() -> str | None:
    """Build (or load the cached build); a bad knob raises UsageError, a failed build is the reason returned."""
    settings()
    check_environment()
    problem = build.cache_problem()
    if problem:  # before any build: a traceback from deep inside one otherwise
        from dcnbench.backends import Reason

        return Reason(problem[0], problem[1], setting=True)
    try:
        LIBRARY.ops()
    except build.BuildError as exc:
        return f"{exc} (fix: {exc.hint})"
    return None


def backend() -> Backend:
    return Backend(
        name=NAME,
        description="ext's CUDA kernels compiled for the CPU through an emulation of the CUDA runtime (tests them "
                    "without a GPU; slow)",
        ops=LIBRARY.op_table(),
        dtypes={"cpu": ("float64", "float32", "float16", "bfloat16")},
        version=torch.__version__,
        kind="emulated",
        onnx_translations=_onnx_translations,
        check=check,
        environment=lambda: f"built in {build.target_dir(build.emulated())}",
        mode=mode,
        knobs=knobs,
    )


def knobs(device: str) -> tuple:
    """The order the emulator runs blocks and threads in (reversed, shuffled): results must stay
    within tolerance, and bitwise the same in deterministic mode (what a GPU's scheduler varies)."""
    from dcnbench.checking.knobs import env_knob

    return (env_knob("block_order", "DCNBENCH_EMU_ORDER", ("reverse", "shuffle"), bitwise=deterministic()),)


def _onnx_translations() -> dict:
    """The emulated library's forward op as one DeformConv node, as ext's (onnx.py)."""
    from dcnbench.backends.ext import onnx

    return onnx.translations(LIBRARY)

"""`dcnbench build`: build the `ext` backend ahead of first use, or (CI) its CUDA build without a GPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import console, user_errors
from dcnbench.errors import EXIT_OK, UsageError


def build(*, verbose: bool = False, cuda_objects: Path | None = None) -> int:
    from dcnbench.backends.ext import build as ext_build

    try:
        if cuda_objects is not None:
            lib = ext_build.build_cuda_without_gpu(cuda_objects, verbose=verbose)
            console.print(f"built the CUDA ext library as a first --device cuda run does, with {ext_build.nvcc()} "
                          f"for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}: {lib}", highlight=False)
            return EXIT_OK
        problem = ext_build.cache_problem()
        if problem:
            raise UsageError(problem[0], hint=problem[1])
        lib = ext_build.load(verbose=verbose)
    except ext_build.BuildError as exc:
        raise UsageError(str(exc), hint=exc.hint) from None
    console.print(f"ext backend ready: {lib} ({'CPU and CUDA' if ext_build.with_cuda() else 'CPU'} kernels)", highlight=False)
    return EXIT_OK


@user_errors
def command(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the compiler's output.")] = False,
    cuda_objects: Annotated[Path | None, typer.Option("--cuda-objects", help="Build the CUDA library exactly as a first "
                                                      "--device cuda run does (compile and link, sm_80 and sm_90 unless "
                                                      "TORCH_CUDA_ARCH_LIST says), fresh in this folder; no GPU needed "
                                                      "(what CI runs).")] = None,
) -> None:
    """Build the ext backend's kernels now (they are otherwise built, and cached, on first use).

    Exit status: 0 built, 2 a compiler, ninja or nvcc is missing or the build failed.
    """
    raise typer.Exit(build(verbose=verbose, cuda_objects=cuda_objects))

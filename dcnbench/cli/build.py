"""`dcnbench build`: build the `ext` backend ahead of first use, or compile its CUDA sources to objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench.cli.common import console, user_errors
from dcnbench.errors import EXIT_OK, UsageError


def build(*, verbose: bool = False, cuda_objects: Path | None = None) -> int:
    from dcnbench.backends.ext import build as ext_build

    try:
        if cuda_objects is not None:
            objects = ext_build.compile_cuda_objects(cuda_objects)
            console.print(f"compiled {len(objects)} CUDA sources with {ext_build.nvcc()}: "
                          f"{', '.join(str(o) for o in objects)}", highlight=False)
            return EXIT_OK
        lib = ext_build.load(verbose=verbose)
    except ext_build.BuildError as exc:
        raise UsageError(str(exc), hint=exc.hint) from None
    console.print(f"ext backend ready: {lib} ({'CPU and CUDA' if ext_build.with_cuda() else 'CPU'} kernels)", highlight=False)
    return EXIT_OK


@user_errors
def command(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the compiler's output.")] = False,
    cuda_objects: Annotated[Path | None, typer.Option("--cuda-objects", help="Only compile every .cu file to objects in "
                                                      "this folder with nvcc (no GPU needed; what CI runs).")] = None,
) -> None:
    """Build the ext backend's kernels now (they are otherwise built, and cached, on first use).

    Exit status: 0 built, 2 a compiler, ninja or nvcc is missing or the build failed.
    """
    raise typer.Exit(build(verbose=verbose, cuda_objects=cuda_objects))

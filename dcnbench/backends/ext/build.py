"""Build the `ext` backend's C++ (and, where CUDA is present, CUDA) sources, once, and load them.

torch's cpp_extension compiles with ninja into a cache folder keyed by the torch version, the
device kind and a hash of the sources, so a rebuild happens only when one of them changes. The
first build prints one line on stderr (it takes a minute or two); `dcnbench build` builds ahead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
ROOT = HERE.parents[2]
LIBRARY = "dcnbench_ext"
# cpp_extension warns on import when it finds no CUDA runtime; here that is the expected case.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


class BuildError(RuntimeError):
    """Why the extension cannot be built here, with the fix (one line each)."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


def cpp_sources() -> list[Path]:
    return [CSRC / "ext.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]


def cuda_sources() -> list[Path]:
    return sorted((CSRC / "cuda").glob("*.cu"))


def with_cuda() -> bool:
    """CUDA kernels are built where torch sees a GPU and a CUDA toolkit is installed."""
    from torch.utils import cpp_extension

    return torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths + list(CSRC.glob("*.h")) + [Path(__file__)]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def build_dir(cuda: bool | None = None) -> Path:
    cuda = with_cuda() if cuda is None else cuda
    base = Path(os.environ.get("DCNBENCH_EXT_BUILD_DIR", ROOT / ".cache" / "ext"))
    sources = cpp_sources() + (cuda_sources() if cuda else [])
    return base / f"torch-{torch.__version__}-{'cuda' if cuda else 'cpu'}-{_digest(sources)}"


def problems(cuda: bool | None = None) -> BuildError | None:
    """What is missing to build here (None when nothing is)."""
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return BuildError(f"no C++ compiler: '{cxx}' is not on the PATH",
                          "install one (Debian: apt-get install g++) or point $CXX at it")
    if not cpp_extension.is_ninja_available():
        return BuildError("ninja is not available to torch.utils.cpp_extension",
                          "run `make env` (ninja is a locked dependency), or pip install ninja")
    if (with_cuda() if cuda is None else cuda) and shutil.which(str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc")) is None:
        return BuildError("a GPU is visible but nvcc is not found under CUDA_HOME",
                          "install the CUDA toolkit or set CUDA_HOME to it")
    return None


_loaded: Path | None = None


def library_path(directory: Path) -> Path:
    return directory / f"{LIBRARY}.so"


def load(verbose: bool = False) -> Path:
    """Build if needed and load the library into torch.ops.dcnbench_ext; returns the .so's path."""
    global _loaded
    if _loaded is not None:
        return _loaded
    cuda = with_cuda()
    directory = build_dir(cuda)
    lib = library_path(directory)
    if not lib.exists():
        problem = problems(cuda)
        if problem:
            raise problem
        directory.mkdir(parents=True, exist_ok=True)
        print(f"dcnbench: building the ext backend ({'CPU and CUDA' if cuda else 'CPU'}) in {directory}; "
              "this takes a minute or two, once", file=sys.stderr, flush=True)
        from torch.utils import cpp_extension

        sources = [str(p) for p in cpp_sources() + (cuda_sources() if cuda else [])]
        try:
            cpp_extension.load(name=LIBRARY, sources=sources, build_directory=str(directory),
                               extra_cflags=["-O3", "-fopenmp"], extra_cuda_cflags=["-O3"],
                               extra_include_paths=[str(p) for p in _wheel_cuda_includes()] if cuda else None,
                               is_python_module=False, verbose=verbose)
        except Exception as exc:
            raise BuildError(f"building the ext backend failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}",
                             f"run `dcnbench build --verbose` to see the compiler's output (build folder {directory})") from exc
        _loaded = lib
        return lib
    torch.ops.load_library(str(lib))
    _loaded = lib
    return lib


# ---- CUDA sources on a machine without a GPU: compile to objects only (CI) ------------------------


def nvcc() -> Path | None:
    """The CUDA compiler: $CUDA_HOME/bin/nvcc, else the one on the PATH."""
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return Path(home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    return Path(found) if found else None


def _cuda_includes(compiler: Path) -> list[str]:
    from torch.utils import cpp_extension

    dirs = [Path(p) for p in cpp_extension.include_paths()]
    homes = [Path(os.environ["CUDA_HOME"])] if os.environ.get("CUDA_HOME") else []
    homes += [compiler.resolve().parent.parent, Path("/usr/local/cuda")]
    dirs += [h / "include" for h in homes if (h / "include" / "cuda_runtime.h").exists()][:1]
    dirs += _wheel_cuda_includes()
    return [f"-I{d}" for d in dirs]


def _wheel_cuda_includes() -> list[Path]:
    """torch's CUDA wheels bring the CUDA library headers (cusparse.h, cublas_v2.h, ...) as packages."""
    site = Path(torch.__file__).resolve().parents[1]
    return sorted(p for p in (site / "nvidia").glob("*/include") if p.is_dir())


def compile_cuda_objects(out_dir: Path, arch: str = "90") -> list[Path]:
    """nvcc -c every .cu against torch's headers (no GPU needed), so a broken CUDA source fails CI."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    compiler = nvcc()
    if compiler is None:
        raise BuildError("nvcc is not found (CUDA_HOME unset and no nvcc on the PATH)",
                         "install the CUDA toolkit (it provides nvcc) or set CUDA_HOME")
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-std=c++20", "-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
             f"-gencode=arch=compute_{arch},code=sm_{arch}", "-DTORCH_API_INCLUDE_EXTENSION_H",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *_cuda_includes(compiler)]

    def one(src: Path) -> tuple[Path, subprocess.CompletedProcess]:
        obj = out_dir / (src.stem + ".o")
        return obj, subprocess.run([str(compiler), "-c", str(src), "-o", str(obj), *flags], capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        done = list(pool.map(one, cuda_sources()))
    failed = [(obj, p) for obj, p in done if p.returncode != 0]
    if failed:
        obj, p = failed[0]
        errors = [ln for ln in (p.stdout + p.stderr).splitlines() if "error" in ln] or (p.stdout + p.stderr).splitlines()[-1:]
        sys.stderr.write(p.stdout + p.stderr)
        raise BuildError(f"nvcc failed on {obj.stem}.cu: {errors[0].strip() if errors else 'see above'}",
                         "fix the CUDA source; the full compiler output is above")
    return [obj for obj, _ in done]

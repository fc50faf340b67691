"""Build the `ext` backend's C++ sources once per version of them, keep the result, and load it.

What is built (a `Target` each), always with torch's cpp_extension and ninja:
- `native(cuda)`: the op library `dcnbench_ext`, ext.cpp + cpu/*.cpp, plus cuda/*.cu compiled by nvcc
  where torch sees a GPU and nvcc exists (or when CI asks for it: `dcnbench build --cuda-objects`);
- `emulated()`: `dcnbench_ext_emu`, ext.cpp + cuda/*.cu compiled by the host C++ compiler through
  csrc/emu/cuda_emu.h, the CUDA kernels registered for CPU tensors (emu.py is its backend);
- the ThreadSanitizer harness of the emulated kernels (race.py), an executable.

The cache (`.cache/ext`, or $DCNBENCH_EXT_BUILD_DIR) holds one folder per target, keyed by the torch
version, the kind and a hash of the sources and flags. It is written atomically: a build runs in a
temporary folder under a lock, records the size and SHA-256 of what it made, and is renamed into
place, so concurrent first builds build once and an interrupted build leaves nothing. A cached
file that fails its recorded size or hash (a truncated .so would crash the process that maps it)
is rebuilt, with one line saying why, and never loaded.

Every C++ file is compiled with torch's headers precompiled (a GCC .gch, one per set of flags, kept in
the same cache; `precompiled_header`), which replaces their parse and nothing else.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
ROOT = HERE.parents[2]
LIBRARY = "dcnbench_ext"
MANIFEST = "dcnbench-build.json"
# cpp_extension warns on import when it finds no CUDA runtime; here that is the expected case.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


class BuildError(RuntimeError):
    """Why the extension cannot be built here, with the fix (one line each)."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Target:
    """One thing built from csrc/: an op library (loaded as torch.ops.<name>) or an executable."""

    kind: str  # names the cache folder: cpu, cuda, emu, race, ...
    name: str  # the library's op namespace, or the executable's name
    sources: tuple[Path, ...]
    cflags: tuple[str, ...] = ()
    cuda_cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    cuda: bool = False  # .cu sources go to nvcc (else to the host compiler, with the cflags)
    executable: bool = False
    csrc: Path = CSRC  # the tree whose headers the sources include (hashed with them)

    @property
    def filename(self) -> str:
        return self.name if self.executable else f"{self.name}.so"

    @property
    def description(self) -> str:
        return {"cpu": "the ext backend (CPU)", "cuda": "the ext backend (CPU and CUDA)",
                "emu": "the emulated CUDA kernels (ext-cuda-emu)",
                "race": f"the race check's ThreadSanitizer build ({self.name})"}.get(self.kind, f"{self.name} ({self.kind})")


def cpp_sources() -> list[Path]:
    return [CSRC / "ext.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]


def cuda_sources(csrc: Path = CSRC) -> list[Path]:
    return sorted((csrc / "cuda").glob("*.cu"))


def native(cuda: bool) -> Target:
    sources = cpp_sources() + (cuda_sources() if cuda else [])
    cflags = ("-O3", "-fopenmp") + ((NATIVE_ISA,) if native_isa() else ())
    return Target("cuda" if cuda else "cpu", LIBRARY, tuple(sources), cflags, ("-O3",), cuda=cuda)


# ext is built on the machine that runs it, so its CPU kernels target that machine's instruction set
# (AVX2 and FMA here, AVX-512 where there is one) instead of the x86-64 baseline (SSE2). What the flag
# means on this machine is part of the cache key (native_isa), so a cache folder shared by machines
# of different CPUs keeps one build per instruction set, and none is loaded where it cannot run.
# Only the host library: the emulated CUDA kernels and the race check keep their portable flags.
NATIVE_ISA = "-march=native"


@functools.lru_cache(maxsize=None)
def native_isa() -> str:
    """What -march=native expands to for this machine's C++ compiler (its driver's `-###` lines: the
    resolved CPU and features), or "" when the compiler does not take the flag (then it is not used)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, NATIVE_ISA, "-###", "-E", "-x", "c++", os.devnull], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stderr if out.returncode == 0 else ""


def native_copy(name: str, csrc: Path) -> Target:
    """ext's CPU library built from another tree (a planted copy of csrc/, in the tests) as the op
    namespace `name`, beside dcnbench_ext: hidden visibility keeps the copy's template kernels and
    inline helpers from binding to dcnbench_ext's of the same name. At -O0: the checks a copy runs are
    small, and the build is most of their cost (2 min against 2 min 53 s at -O3, measured here)."""
    flags = ("-O0", "-fopenmp", f"-DDCN_LIBRARY={name}", "-fvisibility=hidden", "-fvisibility-inlines-hidden")
    return Target("cpu", name, (csrc / "ext.cpp", *sorted((csrc / "cpu").glob("*.cpp"))), flags, csrc=csrc)


# The .cu files as C++ (`-x c++` precedes them on the compiler's command line), through the
# emulation header, into a library of their own registered for the CPU dispatch key. Hidden
# visibility keeps its copies of the inline helpers (sampling.h) from binding to dcnbench_ext's.
# Signed overflow in the kernels' index arithmetic stops the process with its file and line
# (UBSan's runtime; cuda_emu.h): how the emulator checks 32-bit indices past 2^31 without the memory.
SANITIZE = ("-fsanitize=signed-integer-overflow", "-fno-sanitize-recover=signed-integer-overflow")
EMU_CFLAGS = ("-x", "c++", "-O2", "-DDCN_LIBRARY=dcnbench_ext_emu", "-DDCN_CUDA_KEY=CPU", "-fvisibility=hidden",
              "-fvisibility-inlines-hidden", *SANITIZE)


def emulated() -> Target:
    return Target("emu", "dcnbench_ext_emu", (CSRC / "ext.cpp", *cuda_sources(), CSRC / "emu" / "selftest.cpp"), EMU_CFLAGS,
                  ldflags=SANITIZE[:1])


def emulated_copy(name: str, csrc: Path, cuda_files: tuple[str, ...] | None = None) -> Target:
    """The emulated library built from another tree (a planted copy of csrc/, in the tests) as the op
    namespace `name`, from its ext.cpp and its .cu files (`cuda_files` only, when given)."""
    flags = tuple(f"-DDCN_LIBRARY={name}" if f.startswith("-DDCN_LIBRARY=") else f for f in EMU_CFLAGS)
    files = [csrc / "cuda" / f for f in cuda_files] if cuda_files else cuda_sources(csrc)
    return Target("emu", name, (csrc / "ext.cpp", *files), flags, ldflags=SANITIZE[:1], csrc=csrc)


def with_cuda() -> bool:
    """CUDA kernels are built where torch sees a GPU and a CUDA toolkit is installed."""
    from torch.utils import cpp_extension

    return torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None


# Part of every cache key: bump it when a change here changes what a build produces
# (3: the C++ files are compiled with the precompiled torch headers).
BUILD_VERSION = "3"


def _digest(target: Target) -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    headers = sorted(target.csrc.rglob("*.h"))
    for p in sorted(set(target.sources)) + headers:
        h.update(str(p.relative_to(target.csrc) if p.is_relative_to(target.csrc) else p.name).encode())
        h.update(p.read_bytes())
    h.update(repr((target.cflags, target.cuda_cflags, target.ldflags, target.executable)).encode())
    if NATIVE_ISA in target.cflags:  # the instruction set the flag selects on this machine
        h.update(native_isa().encode())
    if target.cuda:  # the GPU architectures compiled for
        h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
        if torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            h.update(repr([torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]).encode())
    return h.hexdigest()[:12]


BUILD_DIR_ENV = "DCNBENCH_EXT_BUILD_DIR"


def cache_base() -> Path:
    return Path(os.environ.get(BUILD_DIR_ENV) or ROOT / ".cache" / "ext")


def cache_problem() -> tuple[str, str] | None:
    """(what, fix) when the build cache cannot be used: a file where its folder should be, or a
    folder that cannot be created or written; None when it can. Checked before any build starts."""
    base = cache_base()
    named = f"{BUILD_DIR_ENV}={base}" if os.environ.get(BUILD_DIR_ENV) else f"the build cache {base}"
    fix = f"point {BUILD_DIR_ENV} at a folder you can write (it is created if missing), or unset it"
    if base.exists() and not base.is_dir():
        return f"{named} is a file, not a folder", fix
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{named} cannot be created: {exc.strerror or exc}", fix
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{named} is not writable", fix
    return None


def target_dir(target: Target, base: Path | None = None) -> Path:
    return (base or cache_base()) / f"torch-{torch.__version__}-{target.kind}-{_digest(target)}"


def build_dir(cuda: bool | None = None) -> Path:
    return target_dir(native(with_cuda() if cuda is None else cuda))


def library_path(directory: Path) -> Path:
    return directory / f"{LIBRARY}.so"


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
    if (with_cuda() if cuda is None else cuda) and nvcc() is None:
        return BuildError("nvcc is not found (CUDA_HOME unset and no nvcc on the PATH)",
                          "install the CUDA toolkit (it provides nvcc) or set CUDA_HOME to it")
    return None


# ---- the cache: verified, built under a lock in a temporary folder, renamed into place -------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def damage(directory: Path, target: Target) -> str | None:
    """Why the cached build in `directory` must not be used (None when it is intact)."""
    try:
        record = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return "it has no integrity record (an interrupted or older build)"
    built = directory / target.filename
    if record.get("file") != target.filename or not built.is_file():
        return f"{target.filename} is missing"
    size = built.stat().st_size
    if size != record.get("bytes"):
        return f"{target.filename} is {size} bytes, {record.get('bytes')} were built (truncated or overwritten)"
    if _sha256(built) != record.get("sha256"):
        return f"{target.filename} does not match the SHA-256 recorded when it was built"
    return None


@contextmanager
def _locked(final: Path):
    """An exclusive lock for building `final`; the kernel releases it if this process dies."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _discard(directory: Path) -> None:
    """Move aside, then delete: a reader never sees a half-deleted folder under the final name."""
    if directory.exists():
        trash = directory.with_name(f".{directory.name}.trash{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def _publish(final: Path, make: Callable[[Path], None]) -> None:
    """`final` made by make(work) in a temporary folder beside it, then renamed into place: a reader
    never sees a half-made folder, and an interrupted one leaves none. The caller holds _locked(final),
    so other temporary folders of `final` are an interrupted process's: removed first."""
    for stale in final.parent.glob(f".{final.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = final.with_name(f".{final.name}.tmp{os.getpid()}")
    work.mkdir(parents=True)
    try:
        make(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    work.rename(final)


def _record(directory: Path, target: Target) -> None:
    built = directory / target.filename
    with built.open("rb") as f:
        os.fsync(f.fileno())
    record = {"file": target.filename, "bytes": built.stat().st_size, "sha256": _sha256(built),
              "torch": torch.__version__, "kind": target.kind}
    with (directory / MANIFEST).open("w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


_loaded: dict[str, Path] = {}  # op namespace -> the library loaded into this process


def ensure(target: Target, base: Path | None = None, verbose: bool = False, quiet: bool = False) -> Path:
    """The built file of `target`, verified; built first when the cache has no intact copy.

    A library built here is also loaded into this process (cpp_extension.load does both)."""
    final = target_dir(target, base)
    if damage(final, target) is None:
        return final / target.filename
    with _locked(final):
        why = damage(final, target)  # another process may have built it while this one waited
        if why is None:
            return final / target.filename
        if final.exists():
            print(f"dcnbench: the cached build {final / target.filename} is damaged ({why}); rebuilding it",
                  file=sys.stderr, flush=True)
            _discard(final)
        problem = problems(target.cuda)
        if problem:
            raise problem
        if not quiet:
            print(f"dcnbench: building {target.description} in {final}; this takes a minute or two, once",
                  file=sys.stderr, flush=True)

        def make(work: Path) -> None:
            _compile(target, work, verbose)
            _record(work, target)

        _publish(final, make)
    if not target.executable:  # cpp_extension.load loaded it (from the folder now renamed: the mapping stays)
        _loaded[target.name] = final / target.filename
    return final / target.filename


def _compile(target: Target, work: Path, verbose: bool) -> None:
    from torch.utils import cpp_extension

    includes, ldflags = (_cuda_arguments(work) if target.cuda else ([], []))
    header = precompiled_header(target, includes, verbose)
    cflags = list(target.cflags) + (["-include", shlex.quote(str(header)), "-Winvalid-pch"] if header else [])
    try:
        cpp_extension.load(name=target.name, sources=[str(p) for p in target.sources], build_directory=str(work),
                           extra_cflags=cflags, extra_cuda_cflags=list(target.cuda_cflags),
                           extra_include_paths=includes, extra_ldflags=list(target.ldflags) + ldflags,
                           with_cuda=target.cuda, is_python_module=False, is_standalone=target.executable,
                           verbose=verbose)
    except Exception as exc:
        raise BuildError(f"building {target.description} failed: {_first_error(str(exc)) or type(exc).__name__}",
                         "run `dcnbench build --verbose` to see the compiler's output") from exc


def _first_error(text: str) -> str:
    """The compiler's first error line in cpp_extension's exception text (else its last line)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith(("Error building extension", "FAILED:"))]
    return (errors or lines or [""])[0][:300]


# ---- torch's headers, precompiled -----------------------------------------------------------------

# A C++ file of csrc/ spends most of its compile parsing torch's headers: a file with only the three
# includes below takes 17-19 s on the 2-core EPYC that runs the tests (-O0 and -O3 alike), the real
# files 11-23 s at -O0, so ~80 % of every build, each target and each file parsing them again. GCC
# saves that parse once in a .gch (33 s to make, 427 MB) that a compile loads in a second or two
# (deform_conv2d.cpp at -O0: 18 s -> 5.5 s). GCC uses a .gch only in a compile with the flags it was
# made with (-O level, -march, -fopenmp, -fsanitize, -fPIC, -std, the macros the headers read) and
# otherwise parses the header as text, slowly but correctly (-Winvalid-pch says why; tests/test_pch.py
# checks that every object of the real targets used it). So one .gch per set of flags, in the build
# cache under a key of those flags, the torch version and the compiler, made once under a lock and
# shared by every target with those flags (the planted copies share their original's). Where it cannot
# be made (a compiler without PCH support, a cache it cannot write) the build compiles without it.
PCH_HEADERS = ("ATen/ATen.h", "ATen/Parallel.h", "torch/library.h")
PCH_FILE = "torch_headers.h"
# Macros of csrc/'s own (and the library's name cpp_extension defines), which torch's headers never
# read: a .gch made without them is valid in a compile that defines them (GCC checks only the macros
# the header uses), so the targets that differ in nothing else share one.
OWN_MACROS = ("-DDCN_LIBRARY=", "-DDCN_CUDA_KEY=", "-DTORCH_EXTENSION_NAME=")


def pch_flags(target: Target) -> list[str]:
    """What the .gch for `target`'s C++ files is made with: cpp_extension's flags for the target (its
    _write_ninja_file_to_build_library: -D, -isystem torch's folders, -fPIC, -std) then the target's own
    (the language, -x c++, dropped: the header is c++-header), less OWN_MACROS. Include folders by their
    real path, so worktrees sharing one venv share the .gch."""
    import sysconfig

    from torch.utils import cpp_extension

    system = cpp_extension.include_paths("cuda" if target.cuda else "cpu") + [sysconfig.get_path("include")]
    flags = [] if target.executable else ["-DTORCH_API_INCLUDE_EXTENSION_H"]
    flags += [f for inc in system for f in ("-isystem", os.path.realpath(inc))] + ["-fPIC", "-std=c++20"]
    own = [f for i, f in enumerate(target.cflags) if f != "-x" and (i == 0 or target.cflags[i - 1] != "-x")]
    return flags + [f for f in own if not f.startswith(OWN_MACROS)]


@functools.lru_cache(maxsize=None)
def _compiler_identity(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"{shutil.which(cxx)}\n{out}"


def pch_dir(target: Target) -> Path:
    """The cache folder of the .gch `target` is compiled with."""
    from torch.utils import cpp_extension

    cxx = cpp_extension.get_cxx_compiler()
    flags = pch_flags(target)
    h = hashlib.sha256(repr((PCH_HEADERS, cxx, _compiler_identity(cxx), flags)).encode())
    if NATIVE_ISA in flags:
        h.update(native_isa().encode())
    return cache_base().absolute() / f"pch-torch-{torch.__version__}-{h.hexdigest()[:12]}"


def _make_pch(target: Target, includes: list[str], work: Path) -> None:
    from torch.utils import cpp_extension

    (work / PCH_FILE).write_text("".join(f"#include <{h}>\n" for h in PCH_HEADERS))
    gch = work / f"{PCH_FILE}.gch"
    cmd = [cpp_extension.get_cxx_compiler(), *pch_flags(target), *[f"-I{i}" for i in includes],
           "-x", "c++-header", str(work / PCH_FILE), "-o", str(gch)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0 or not gch.is_file():
        raise OSError(_first_error(out.stdout + out.stderr) or f"exit status {out.returncode}")
    with gch.open("rb") as f:
        os.fsync(f.fileno())


def precompiled_header(target: Target, includes: list[str], verbose: bool = False) -> Path | None:
    """The header to -include (its .gch beside it), made first when the cache has none; None when
    it cannot be made, and the build goes on without it."""
    final = pch_dir(target)
    header = final / PCH_FILE
    try:
        if (final / f"{PCH_FILE}.gch").is_file():
            return header
        with _locked(final):
            if (final / f"{PCH_FILE}.gch").is_file():  # made by another process meanwhile
                return header
            _discard(final)
            _publish(final, lambda work: _make_pch(target, includes, work))
    except (OSError, subprocess.SubprocessError) as exc:
        if verbose:
            print(f"dcnbench: compiling without precompiled torch headers ({exc})", file=sys.stderr, flush=True)
        return None
    return header


def load_target(target: Target, verbose: bool = False) -> Path:
    """Build if needed and load an op library into torch.ops.<target.name>; returns the .so's path."""
    if target.name in _loaded:
        return _loaded[target.name]
    lib = ensure(target, verbose=verbose)
    if target.name not in _loaded:  # not loaded by a build just now
        torch.ops.load_library(str(lib))
        _loaded[target.name] = lib
    return lib


def load(verbose: bool = False) -> Path:
    """Build if needed and load the library into torch.ops.dcnbench_ext; returns the .so's path."""
    return load_target(native(with_cuda()), verbose)


# ---- CUDA: the toolkit's own headers first, the wheel's only for what the toolkit lacks ------------

CI_ARCHS = "8.0;9.0"  # GPU architectures CI compiles for (Ampere and Hopper), unless TORCH_CUDA_ARCH_LIST says


def build_cuda_without_gpu(directory: Path, verbose: bool = False) -> Path:
    """Build what a user's first `--device cuda` run builds, on a machine without a GPU (CI).

    The same target and the same call (`ensure(native(cuda=True))`, i.e. cpp_extension.load with the
    same sources, flags, include folders and link flags), so a build that fails for a user fails
    here; only the GPU architectures are fixed ($TORCH_CUDA_ARCH_LIST, else 8.0 and 9.0) since none
    can be asked. It compiles and links (loading needs no GPU), fresh in `directory` every time."""
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CI_ARCHS)
    shutil.rmtree(directory, ignore_errors=True)
    return ensure(native(True), base=directory, verbose=verbose)



def nvcc() -> Path | None:
    """The CUDA compiler cpp_extension runs: $CUDA_HOME/bin/nvcc (CUDA_HOME as torch finds it)."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return Path(home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    return Path(found) if found else None


def toolkit_root() -> Path | None:
    """The toolkit the nvcc that compiles belongs to: nvcc's own TOP (`nvcc --dryrun`).

    Not always cpp_extension's CUDA_HOME: from a wrapper script /usr/local/bin/nvcc torch guesses
    /usr/local, and would link -L/usr/local/lib64 -lcudart, which is not there."""
    compiler = nvcc()
    if compiler is None:
        return None
    out = subprocess.run([str(compiler), "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True)
    tops = [ln.split("=", 1)[1].strip() for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("#$ TOP=")]
    return Path(tops[0]).resolve() if tops else None


def wheel_cuda_includes() -> list[Path]:
    """torch's CUDA wheels bring the CUDA library headers (cusparse.h, cublas_v2.h, ...) as packages."""
    site = Path(torch.__file__).resolve().parents[1]
    return sorted(p for p in (site / "nvidia").glob("*/include") if p.is_dir())


def _wheel_only_includes(directory: Path, toolkit: Path | None) -> Path:
    """A folder of links to the wheel's CUDA headers that the toolkit lacks (cublas_v2.h, cusparse.h,
    ... which ATen/cuda/CUDAContext.h includes). Only those: as `-I` they come before nvcc's own
    include folder, and a wheel of another CUDA version must not shadow the toolkit's runtime headers
    (nvcc 13.0 stops at cccl's cuda_toolkit.h #error when it reads the 13.2 wheel's cuda_runtime_api.h)."""
    have = {p.name for p in (toolkit / "include").iterdir()} if toolkit and (toolkit / "include").is_dir() else set()
    out = directory / "wheel_cuda_include"
    out.mkdir(parents=True, exist_ok=True)
    for inc in wheel_cuda_includes():
        for entry in inc.iterdir():
            if entry.name not in have and not (out / entry.name).exists():
                (out / entry.name).symlink_to(entry)
    return out


def _cuda_arguments(directory: Path) -> tuple[list[str], list[str]]:
    """(extra_include_paths, extra_ldflags) for a CUDA build in `directory`."""
    toolkit = toolkit_root()
    lib = next((toolkit / d for d in ("lib64", "lib") if toolkit and (toolkit / d / "libcudart.so").exists()), None)
    return [str(_wheel_only_includes(directory, toolkit))], ([f"-L{lib}"] if lib else [])

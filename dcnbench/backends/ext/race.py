"""The race check: ext's CUDA kernels, emulated on the CPU, under ThreadSanitizer.

csrc/emu/race_main.cpp calls every kernel through the dispatcher; it is built together with ext.cpp
and cuda/*.cu (compiled as C++ through csrc/emu/cuda_emu.h) with -fsanitize=thread into one
executable, cached like the ext libraries (build.py: by a hash of the sources, atomically). Run with
DCNBENCH_EMU_THREADS > 1, blocks (or with DCNBENCH_EMU_SPLIT=thread the threads of each block) run
on several OS threads with nothing ordering them but the launch, so a plain write that two GPU
threads can make to one address is a race TSan reports; atomicAdd (std::atomic_ref) is not one.
Only the kernels are instrumented (libtorch is linked as shipped and runs single-threaded).

    python -m dcnbench.backends.ext.race      # build if needed, run every setting, one line each
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dcnbench.backends.ext import build

RACE_CFLAGS = ("-x", "c++", "-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=thread",
               "-DDCN_LIBRARY=dcnbench_ext_emu", "-DDCN_CUDA_KEY=CPU")
MODES = ("atomic", "deterministic")
# Several OS threads: blocks spread round robin, in launch and shuffled order; threads of each block
# spread (a race between threads of one block is otherwise run on one OS thread, invisible).
SETTINGS = (
    {"DCNBENCH_EMU_THREADS": "4"},
    {"DCNBENCH_EMU_THREADS": "4", "DCNBENCH_EMU_ORDER": "shuffle", "DCNBENCH_EMU_SEED": "1"},
    {"DCNBENCH_EMU_THREADS": "4", "DCNBENCH_EMU_SPLIT": "thread"},
)
TSAN_EXIT = 66  # ThreadSanitizer's exit status when it reported something


def target(csrc: Path = build.CSRC, cuda_files: tuple[str, ...] | None = None, name: str = "dcnbench_race") -> build.Target:
    """The TSan executable of the kernels in `csrc` (all its .cu files, or only `cuda_files`)."""
    cu = [p for p in build.cuda_sources(csrc) if cuda_files is None or p.name in cuda_files]
    return build.Target("race", name, (csrc / "ext.cpp", *cu, csrc / "emu" / "race_main.cpp"), RACE_CFLAGS,
                        ldflags=("-fsanitize=thread",), executable=True, csrc=csrc)


@dataclass(frozen=True)
class RaceRun:
    mode: str
    settings: dict
    returncode: int
    reports: int  # "WARNING: ThreadSanitizer" blocks
    summaries: tuple[str, ...]  # TSan's one-line SUMMARY of each report
    ran: tuple[str, ...]  # the ops the executable called
    log: str

    def line(self) -> str:
        knobs = " ".join(f"{k.removeprefix('DCNBENCH_EMU_')}={v}" for k, v in self.settings.items())
        found = "; ".join(dict.fromkeys(s.removeprefix("SUMMARY: ThreadSanitizer: ") for s in self.summaries))
        return (f"{self.mode:13} {knobs:40} exit {self.returncode:3}  {self.reports} race report(s)"
                f"{': ' + found if found else ''}  ({len(self.ran)} kernels called)")


def run(exe: Path, mode: str, settings: dict, timeout: float = 300) -> RaceRun:
    env = dict(os.environ, **settings, TSAN_OPTIONS=f"exitcode={TSAN_EXIT} halt_on_error=0")
    cmd = [str(exe), mode]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if "unexpected memory mapping" in p.stderr:  # TSan and a kernel with high ASLR entropy: run without ASLR
        p = subprocess.run(["setarch", os.uname().machine, "-R", *cmd], env=env, capture_output=True, text=True,
                           timeout=timeout)
    lines = p.stderr.splitlines()
    return RaceRun(mode, dict(settings), p.returncode, p.stderr.count("WARNING: ThreadSanitizer:"),
                   tuple(ln for ln in lines if ln.startswith("SUMMARY: ThreadSanitizer")),
                   tuple(ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("ran ")), p.stdout + p.stderr)


def check(exe: Path) -> list[RaceRun]:
    """Every mode under every setting."""
    return [run(exe, mode, s) for mode in MODES for s in SETTINGS]


def main() -> int:
    exe = build.ensure(target())
    runs = check(exe)
    for r in runs:
        print(r.line())
    clean = all(r.reports == 0 and r.returncode == 0 for r in runs)
    print("race check:", "clean" if clean else "RACES REPORTED")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())

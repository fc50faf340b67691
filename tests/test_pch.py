"""ext's builds compile with torch's headers precompiled (build.precompiled_header): every object of
the real targets used the .gch, one .gch per set of flags, and a build goes on without one that
cannot be made.

A .gch that GCC rejects (made with other flags) is not an error, only a compile as slow as without
it (-Winvalid-pch says so in `dcnbench build --verbose`), so the proof is in what each compile read:
GCC's -MMD lists an -include'd header it parsed as text, and not one it loaded from its .gch (ninja
keeps those lists in the build folder: `ninja -t deps`). The probe tests precompile two standard
headers instead of torch's, which cost seconds, not half a minute."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dcnbench.backends.ext import build, race

NINJA = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")


def pch_misses(directory: Path) -> list[str]:
    """The C++ objects of the build in `directory` that did not load the precompiled header: compiled
    without `-include` of it, with no dependency record, or with the header in their record (parsed)."""
    ninja = (directory / "build.ninja").read_text()
    objects = re.findall(r"^build (\S+\.o): compile ", ninja, re.M)
    included = re.search(r"^cflags = .*-include (\S+)", ninja, re.M)
    if not included:
        return objects
    deps = subprocess.run([NINJA, "-t", "deps"], cwd=directory, capture_output=True, text=True, check=True).stdout
    records = dict(re.findall(r"^(\S+\.o): #deps.*\n((?:[ \t]+\S.*\n?)*)", deps, re.M))
    return [o for o in objects if o not in records or included.group(1) in records[o].split()]


@pytest.mark.parametrize("make", [lambda: build.native(False), build.emulated, race.target], ids=["native", "emulated", "race"])
def test_every_cpp_object_of_the_real_targets_loaded_the_precompiled_header(make):
    target = make()
    built = build.ensure(target, quiet=True)  # the tests of these targets build them anyway (and load dcnbench_ext)
    included = re.findall(r"-include (\S+)", (built.parent / "build.ninja").read_text())
    # resolved: a cache reached through a link (a worktree's .cache/ext) names the same header another way
    assert [Path(p).resolve() for p in included] == [(build.pch_dir(target) / build.PCH_FILE).resolve()]
    assert pch_misses(built.parent) == []


def test_one_precompiled_header_per_set_of_flags_shared_by_the_planted_copies(tmp_path):
    emu, copy = build.emulated(), build.emulated_copy("dcnbench_ext_emu_other", tmp_path)
    assert build.pch_dir(emu) == build.pch_dir(copy)  # they differ only in the op namespace (OWN_MACROS)
    dirs = {build.pch_dir(t) for t in (emu, build.native(False), build.native_copy("x", tmp_path), race.target())}
    assert len(dirs) == 4  # -O2 and UBSan, -O3 -march=native, -O0, TSan: four sets of flags


# ---- a probe: one small executable, its two standard headers precompiled ---------------------------


def _probe(tmp_path: Path, monkeypatch, cache: Path, name: str) -> tuple[build.Target, Path]:
    """(target, its build folder). One name per test: cpp_extension renames a second build of one
    name in a process (name_v1)."""
    csrc = tmp_path / "csrc"
    csrc.mkdir(exist_ok=True)
    (csrc / "probe.cpp").write_text("int main() { std::vector<double> v{4.0}; return std::sqrt(v[0]) == 2.0 ? 0 : 1; }\n")
    monkeypatch.setattr(build, "PCH_HEADERS", ("vector", "cmath"))
    monkeypatch.setenv(build.BUILD_DIR_ENV, str(cache))
    target = build.Target("probe", name, (csrc / "probe.cpp",), ("-O0", "-DDCN_LIBRARY=probe"),
                          executable=True, csrc=csrc)
    exe = build.ensure(target, base=tmp_path / "targets", quiet=True)
    assert subprocess.run([str(exe)], timeout=60).returncode == 0  # it compiled: probe.cpp includes nothing itself
    return target, exe.parent


def test_the_probe_loads_its_precompiled_header_made_without_its_own_macros(tmp_path, monkeypatch):
    target, built = _probe(tmp_path, monkeypatch, tmp_path / "cache", "dcnbench_pch_probe")
    assert (build.pch_dir(target) / f"{build.PCH_FILE}.gch").is_file()
    assert "-DDCN_LIBRARY=probe" not in build.pch_flags(target)
    assert pch_misses(built) == []


@pytest.mark.parametrize("ours, other, name", [("-O0", "-O1", "o1"), ("-std=c++20", "-std=c++17", "cxx17")])
def test_a_precompiled_header_made_with_other_flags_is_caught(tmp_path, monkeypatch, ours, other, name):
    """The planted bug: the .gch made with one flag other than the compile's (GCC rejects it: the
    headers read __NO_INLINE__, __cplusplus), and the build goes on, slower."""
    flags = build.pch_flags
    monkeypatch.setattr(build, "pch_flags", lambda t: [other if f == ours else f for f in flags(t)])
    _, built = _probe(tmp_path, monkeypatch, tmp_path / "cache", f"dcnbench_pch_probe_{name}")
    assert pch_misses(built) == ["probe.o"]


def test_a_header_the_compiler_cannot_precompile_leaves_a_plain_build(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "PCH_HEADERS", ("no_such_header_dcnbench.h",))
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "probe.cpp").write_text("#include <vector>\nint main() { return std::vector<int>{0}[0]; }\n")
    monkeypatch.setenv(build.BUILD_DIR_ENV, str(tmp_path / "cache"))
    target = build.Target("probe", "dcnbench_pch_probe_none", (csrc / "probe.cpp",), ("-O0",), executable=True, csrc=csrc)
    exe = build.ensure(target, quiet=True)
    assert subprocess.run([str(exe)], timeout=60).returncode == 0
    assert "-include" not in (exe.parent / "build.ninja").read_text()
    assert not [p.name for p in (tmp_path / "cache").iterdir() if "pch-" in p.name and not p.name.endswith(".lock")]


def test_a_cache_it_cannot_write_leaves_a_plain_build(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")  # the .gch's cache is a file: no folder can be made in it
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "probe.cpp").write_text("#include <vector>\nint main() { return std::vector<int>{0}[0]; }\n")
    monkeypatch.setattr(build, "PCH_HEADERS", ("vector",))
    monkeypatch.setenv(build.BUILD_DIR_ENV, str(tmp_path / "file"))
    target = build.Target("probe", "dcnbench_pch_probe_nocache", (csrc / "probe.cpp",), ("-O0",), executable=True,
                          csrc=csrc)
    assert build.precompiled_header(target, []) is None
    exe = build.ensure(target, base=tmp_path / "targets", quiet=True)
    assert subprocess.run([str(exe)], timeout=60).returncode == 0
    assert "-include" not in (exe.parent / "build.ninja").read_text()

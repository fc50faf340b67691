"""`gate --against REV`: a git revision (the base) and the working tree (the head) timed in one job.

A stored timing baseline only compares on the machine that wrote it; hosted CI runners change
CPU model from job to job. So the base is built here, now: a git worktree of REV (kept under
`.cache/gate/<commit>` for the next run) with its own environment from REV's own uv.lock
(`uv sync --frozen`: quick from uv's cache). Both sides are driven through
their own CLI (`dcnbench speed ... --json`), never imported, so a base from before a refactor of
the code still runs; both build `ext` into one cache keyed by the kernels' content. The two take turns in short runs, base first in odd rounds and head first
in even ones (ABBA...), so a drift of a shared machine (another job, throttling) lands on both;
each run interleaves its backends round-robin as `speed` always does, so every sample has a
reference sample from the same moment. The samples of all runs of a side are then merged into
one speed document per side, which the existing statistics (dcnbench.results.gate) judge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcnbench.errors import DcnbenchError

# Worktrees of base revisions kept (most recently used first); older ones are removed.
KEEP_WORKTREES = 3


class AgainstError(DcnbenchError):
    """The base revision cannot be found, built or run (exit 2)."""


@dataclass(frozen=True)
class Side:
    """One of the two programs timed: how to call its CLI, and the --impl specs it gets."""

    label: str  # "base" or "head"
    command: tuple[str, ...]  # its dcnbench entry point
    cwd: Path
    impls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What every run times and how: the same for both sides."""

    rounds: int  # runs per side; sides alternate ABBA...
    repeat: int  # samples per backend per run
    warmup_s: float
    threads: int
    workload_args: tuple[str, ...]  # --shape/--preset/--backend/--dcn ..., as given to `speed`
    root: Path  # the head's checkout (its .cache holds the ext builds)


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AgainstError(f"git {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}",
                           hint="run it by hand in the repository to see why")
    return out


def project_root() -> Path:
    """The git checkout this dcnbench runs from (the head)."""
    here = Path(__file__).resolve().parents[2]
    out = _git(here, "rev-parse", "--show-toplevel", check=False)
    if out.returncode != 0 or not (Path(out.stdout.strip()) / "pyproject.toml").is_file():
        raise AgainstError("--against needs dcnbench run from its git checkout (the working tree is the head)",
                           hint="clone the repository, `make env`, and run .venv/bin/dcnbench from there")
    return Path(out.stdout.strip())


def resolve(root: Path, rev: str) -> str:
    out = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if out.returncode != 0:
        raise AgainstError(f"unknown revision '{rev}'",
                           hint="give a branch, tag or commit of this repository; in CI fetch it first "
                                "(actions/checkout with fetch-depth: 0)")
    return out.stdout.strip()


def find_uv(root: Path) -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(root / ".tools" / "bin" / "uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise AgainstError("uv is not found (it builds the base revision's environment)",
                       hint="run `make env` (it installs uv into .tools/), or put uv on the PATH")


def _clean_env() -> dict:
    """The environment for a side's process: not pointed at the head's virtual environment."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH")}


def _valid_worktree(path: Path, commit: str) -> bool:
    if not (path / ".git").exists():
        return False
    head = _git(path, "rev-parse", "HEAD", check=False).stdout.strip()
    dirty = _git(path, "status", "--porcelain", "--untracked-files=no", check=False).stdout.strip()
    return head == commit and not dirty


def worktree(root: Path, commit: str, log: Callable[[str], None]) -> Path:
    """A clean worktree of `commit` under .cache/gate/, reused when one is there already."""
    home = root / ".cache" / "gate"
    path = home / commit[:12]
    if _valid_worktree(path, commit):
        log(f"base worktree {path} (reused)")
    else:
        if path.exists():
            _git(root, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path, ignore_errors=True)
        _git(root, "worktree", "prune")
        home.mkdir(parents=True, exist_ok=True)
        _git(root, "worktree", "add", "--detach", "--force", str(path), commit)
        log(f"base worktree {path} (new)")
    path.touch()
    _prune(root, home, keep=path)
    return path


def _prune(root: Path, home: Path, keep: Path) -> None:
    others = sorted((p for p in home.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[KEEP_WORKTREES - 1:]:
        _git(root, "worktree", "remove", "--force", str(old), check=False)
        shutil.rmtree(old, ignore_errors=True)
    _git(root, "worktree", "prune", check=False)


def build_environment(path: Path, uv: str, mxnet: bool, log: Callable[[str], None]) -> tuple[str, ...]:
    """The base's own environment from its own lock; returns its dcnbench entry point."""
    if not (path / "uv.lock").is_file():
        raise AgainstError(f"the base revision has no uv.lock ({path})", hint="pick a revision that has one")
    t0 = time.monotonic()
    out = subprocess.run([uv, "sync", "--frozen", "--no-dev", "--quiet"], cwd=path, capture_output=True, text=True, env=_clean_env())
    if out.returncode != 0:
        raise AgainstError(f"`uv sync --frozen` failed for the base revision: {_last_line(out.stderr)}",
                           hint=f"run it by hand: cd {path} && uv sync --frozen")
    log(f"base environment: uv sync --frozen ({time.monotonic() - t0:.0f} s)")
    makefile = path / "Makefile"
    if mxnet and makefile.is_file() and "mxnet-env:" in makefile.read_text():
        out = subprocess.run(["make", "-s", "mxnet-env", f"UV={uv}", f"PYTHON={sys.executable}"], cwd=path, capture_output=True,
                             text=True, env=_clean_env())
        log("base mxnet environment: " + ("make mxnet-env" if out.returncode == 0 else f"failed ({_last_line(out.stderr)})"))
    exe = path / ".venv" / "bin" / "dcnbench"
    if not exe.is_file():
        raise AgainstError(f"the base revision installs no `dcnbench` command ({exe})", hint="pick a revision that has the CLI")
    return (str(exe),)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def base_impls(impls: list[str], root: Path, base: Path) -> tuple[str, ...]:
    """The base's --impl specs: a plugin file inside the repository is the base revision's copy
    (it is code under review); one outside is the same file for both. A file the base lacks is dropped."""
    from dcnbench.plugins import parse_impl

    found = []
    for spec in impls:
        name, path, func = parse_impl(spec)
        where = path.resolve()
        if where.is_relative_to(root):
            where = base / where.relative_to(root)
            if not where.is_file():
                continue
        found.append(f"{name or func}={where}:{func}")
    return tuple(found)


def head_impls(impls: list[str]) -> tuple[str, ...]:
    from dcnbench.plugins import parse_impl

    return tuple(f"{name or func}={path.resolve()}:{func}" for name, path, func in map(parse_impl, impls))


def _side_env(root: Path) -> dict:
    """A side's environment. Both sides build `ext` into the head's content-keyed cache (a folder per
    torch version and source digest), so a base whose kernels equal the head's reuses its build, and
    any other is built once per content, across worktrees and CI jobs (a revision that predates the
    variable builds in its own worktree, cached with it)."""
    cache = os.environ.get("DCNBENCH_EXT_BUILD_DIR") or str(root / ".cache" / "ext")
    return _clean_env() | {"NO_COLOR": "1", "COLUMNS": "250", "DCNBENCH_EXT_BUILD_DIR": cache}


def run_once(side: Side, plan: Plan, out: Path) -> Path:
    """One short `dcnbench speed` run of one side; returns its JSON."""
    args = [*side.command, "speed", *plan.workload_args, *[a for spec in side.impls for a in ("--impl", spec)],
            "--repeat", str(plan.repeat), "--warmup", str(plan.warmup_s), "--threads", str(plan.threads),
            "--no-memory", "--json", str(out), "--csv", str(out.with_suffix(".csv"))]
    done = subprocess.run(args, cwd=side.cwd, capture_output=True, text=True, env=_side_env(plan.root))
    if done.returncode != 0 or not out.is_file():
        raise AgainstError(f"the {side.label}'s `dcnbench speed` exited {done.returncode}: {_last_line(done.stderr)}",
                           hint=f"run it by hand: cd {side.cwd} && {' '.join(args)}")
    return out


def measure(base: Side, head: Side, plan: Plan, scratch: Path, log: Callable[[str], None], tag: str = "") -> tuple[dict, dict]:
    """Both sides, `plan.rounds` runs each, alternating ABBA...; one merged speed document per side."""
    from dcnbench.results import load_json

    runs: dict[str, list[dict]] = {"base": [], "head": []}
    for i in range(plan.rounds):
        order = (base, head) if i % 2 == 0 else (head, base)
        took = []
        for side in order:
            t0 = time.monotonic()
            path = run_once(side, plan, scratch / f"{tag}{side.label}-{i + 1}.json")
            runs[side.label].append(load_json(path))
            took.append(f"{side.label} {time.monotonic() - t0:.0f} s")
        log(f"round {i + 1}/{plan.rounds}: {', '.join(took)}")
    return merge_runs(runs["base"]), merge_runs(runs["head"])


def merge_runs(docs: list[dict]) -> dict:
    """One speed document from several runs of one side: each workload x backend's samples in run
    order, so sample i of a backend and of its reference still come from the same round of the same run."""
    from dcnbench.timing.contention import oversubscribed
    from dcnbench.timing.measure import Measurement

    groups: dict[tuple[str, str], list[dict]] = {}
    for doc in docs:
        for r in doc["records"]:
            groups.setdefault((r["case_digest"], r["backend"]), []).append(r)
    records = []
    for group in groups.values():
        first = dict(group[0])
        bad = next((r for r in group if r["status"] != "ok"), None)
        if bad is not None:
            records.append(bad)
            continue
        if len(group) != len(docs):
            records.append(first | {"status": "error", "samples_ms": [],
                                    "message": f"measured in only {len(group)} of {len(docs)} runs"})
            continue
        samples = [s for r in group for s in r["samples_ms"]]
        m = Measurement(tuple(samples))
        records.append(first | {"samples_ms": samples, "median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "runs": len(group),
                                "warnings": m.warnings()})
    # One run on an oversubscribed machine makes the side's timings untrustworthy (gate.py): keep its record.
    env = next((d["environment"] for d in docs if oversubscribed(d["environment"])), docs[0]["environment"])
    return docs[0] | {"records": records, "runs": len(docs), "environment": env}


def fill_reference(base: dict, head: dict) -> None:
    """A base record that does not name its reference row (an older revision) takes the head's."""
    refs = {r["case_digest"]: r.get("baseline") for r in head["records"] if r.get("baseline")}
    for r in base["records"]:
        if not r.get("baseline") and r["case_digest"] in refs:
            r["baseline"] = refs[r["case_digest"]]

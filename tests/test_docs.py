"""The README stays a short map, and the docs site (docs/, mkdocs.yml) covers what the code registers:
every command, every operator, every built-in backend. The site's links are checked by MkDocs'
strict build, which `make test` runs first (`make docs`); the last test here proves that a broken
link does fail that build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 150

# A Markdown link's target: [text](target), target without spaces; images included.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings(path: Path) -> list[str]:
    """The page's Markdown headings (outside fenced code)."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def _table_commands(text: str) -> set[str]:
    """The commands a commands table names: rows that start with `dcnbench NAME`."""
    return set(re.findall(r"^\| `dcnbench ([a-z][a-z-]*)", text, flags=re.M))


def test_readme_is_a_short_map_that_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    # The first commands a newcomer reads: the indented block under the title, `make demo` then `make test`.
    block = []
    for line in lines[1:]:
        if line.startswith("    "):
            block.append(line.split("#")[0].strip())
        elif block:
            break
    assert block[:2] == ["make demo", "make test"], block


def test_readme_links_point_at_files_that_exist():
    # GitHub renders the README, not MkDocs, so its links are checked here.
    text = (ROOT / "README.md").read_text()
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert targets, "the README links to the docs"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_command_is_in_the_commands_reference():
    import typer

    from dcnbench.cli.app import app

    commands = set(typer.main.get_command(app).commands)
    assert {"verify", "speed", "gate"} <= commands
    for page in (DOCS / "commands.md", ROOT / "README.md"):
        missing = commands - _table_commands(page.read_text())
        assert not missing, f"{page.relative_to(ROOT)}'s commands table lacks: {sorted(missing)}"


def test_every_registered_operator_has_a_section():
    from dcnbench.ops import all_ops

    headings = [h for page in sorted((DOCS / "operators").glob("*.md")) for h in _headings(page)]
    names = [op.name for op in all_ops()]
    assert "deform_conv2d" in names
    missing = [n for n in names if not any(f"`{n}`" in h for h in headings)]
    assert not missing, f"operators without a heading in docs/operators/: {missing}"


def test_every_builtin_backend_has_a_section():
    from dcnbench.backends import all_backends

    names = [b.name for b in all_backends() if b.origin == "builtin"]
    assert "pytorch" in names
    headings = _headings(DOCS / "backends.md")
    missing = [n for n in names if f"`{n}`" not in headings]
    assert not missing, f"built-in backends without a `## `name`` section in docs/backends.md: {missing}"


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    # The site as committed (symlinked reports copied as files), plus one link to a page that does not exist.
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs", symlinks=False)
    with open(tmp_path / "docs" / "commands.md", "a") as fh:
        fh.write("\nSee [the options](no-such-page.md).\n")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.fail(f"{mkdocs} is missing: MkDocs is a dev dependency (uv sync installs it)")
    run = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""})
    assert run.returncode != 0, run.stdout + run.stderr
    assert "no-such-page.md" in run.stderr, run.stderr

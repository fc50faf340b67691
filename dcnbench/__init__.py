"""dcnbench: verify and benchmark deformable convolution implementations."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# An install maps ./backends to dcnbench.backends (pyproject's package-dir). A source tree run
# with PYTHONPATH=. (the GPU machine has no install) finds it here instead; an installed copy
# already has dcnbench/backends inside the package and never reaches this.
_tree = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "backends").is_dir() and (_tree / "backends" / "__init__.py").is_file():
    __path__.append(str(_tree))  # noqa: F821 - module __path__ of a package

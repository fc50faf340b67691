"""Results: the files of record (files.py: JSON/CSV, `read` as a pandas DataFrame) and what is made
from them: report, render (terminal tables), plots, summary and gate (CI), against (gate --against REV),
repro bundles.

`dcnbench.results` is the results files' API (`read`, `load`, `save`, `ResultsWriter`, ...).
"""

from dcnbench.results.files import *  # noqa: F401,F403  (the public API of files.py)
from dcnbench.results.files import read  # noqa: F401  (named: the notebook entry point)

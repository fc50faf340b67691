"""A progress bar that appears only on a terminal, and only once a run has lasted a few seconds.

A short run finishes before the bar would mean anything, and a log (a pipe, a file, CI) should
not receive one at all; Rich's bar on a non-interactive console would print nothing useful there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Seconds a run must have lasted before the bar is shown.
DELAY_S = 3.0


class LateProgress:
    """`with LateProgress(console, total, "verify") as bar: ... bar.advance(text)`: M of N, elapsed
    time and the estimated time left, shown from DELAY_S seconds on when the console is interactive."""

    def __init__(self, console: Console, total: int, label: str, delay_s: float = DELAY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.console, self.total, self.label, self.delay_s, self.clock = console, total, label, delay_s, clock
        self.done = 0
        self.progress: Progress | None = None
        self._task = None
        self._t0 = 0.0

    def __enter__(self) -> LateProgress:
        self._t0 = self.clock()
        return self

    def advance(self, description: str = "") -> None:
        self.done += 1
        if self.progress is None and self.console.is_interactive and self.clock() - self._t0 >= self.delay_s:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()
            self._task = self.progress.add_task(self.label, total=self.total, completed=self.done)
        if self.progress is not None:
            self.progress.update(self._task, completed=self.done, description=f"{self.label} {description}".strip())

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

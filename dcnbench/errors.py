"""User-facing errors and the one table of exit codes.

Each error carries one line saying what is wrong and one saying how to fix it. Only the CLI
layer catches these; it prints `error: ...` and `hint: ...` to stderr and exits with the error's
code. Anything else that escapes is our bug and keeps its traceback.
"""

from __future__ import annotations

import traceback

# Documented exit codes (README "Exit codes"); `gate` uses 3 and 4 as well.
EXIT_OK = 0
EXIT_FAILED = 1  # a case failed, errored or was nondeterministic; the gate: a correctness regression
EXIT_USAGE = 2
EXIT_PERFORMANCE = 3  # gate: a performance regression
EXIT_NOISY = 4  # gate: measurements too noisy to decide
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), e.g. a CI job's timeout


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same code writes partial results and stops workers."""


class DcnbenchError(Exception):
    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DcnbenchError):
    """Bad command-line input: a malformed shape, an unknown name, an impossible device."""


class BackendUnavailable(DcnbenchError):
    """A backend the user asked for by name cannot run here."""


class PluginError(DcnbenchError):
    """A --impl plugin is missing, does not import, or fails its probe call."""


class ResultsFileError(DcnbenchError):
    """A results file is unreadable or has a schema this version does not know."""


class NotExportable(Exception):
    """torch.onnx.export could not export the module; the message is the exporter's own reason.
    Here, below both the export check (onnx_export.py) and the worker client that re-raises it."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type, its first line and where it was raised."""
    if hasattr(exc, "one_line"):  # from a worker: its own line (the remote error, or how the worker died)
        return exc.one_line()
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{loc}"

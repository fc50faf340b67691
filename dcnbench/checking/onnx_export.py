"""The ONNX export check: does the model a backend's kernel ends up in compute the same thing after
`torch.onnx.export(dynamo=True)` and onnxruntime?

For a case whose `check` is "export", the case's operator wraps the backend's callable in a small
module (its spec's `export_layer`), this module exports it (opset 19, with the backend's own
`onnx_translations` for custom ops), runs the ONNX model with onnxruntime's CPU provider on the
case's inputs and compares the output with the float64 oracle. An export that fails is
`unsupported`, with the exporter's one-line reason; a model onnxruntime refuses is an `error` row
with the runtime's message. `export_check` does the same for a user's own module. Nothing here
names an operator.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import Counter

import numpy as np
import torch

from dcnbench import ops
from dcnbench.errors import NotExportable

CHECK = "export"
OPSET = 19


class RuntimeRejected(Exception):
    """onnxruntime refused (or failed to run) the exported model; the message is the runtime's."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exporter_reason(exc: BaseException) -> str:
    """The exporter's reason in one line: the line after its `## Exception summary`, else its first line."""
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = next((lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.startswith("## Exception summary")), None)
    reason = summary or (lines[0] if lines else type(exc).__name__)
    return re.sub(r"<class '(?:[\w.]*\.)?(\w+)'>:?", r"\1:", reason).replace("::", ":")


def export_model(module: torch.nn.Module, args: tuple, translations: dict | None = None):
    """The ONNX ModelProto of `module` called on `args`; NotExportable with the exporter's reason."""
    # The exporter reports progress on stdout and warns freely: neither belongs in dcnbench's output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, verbose=False,
                                        custom_translation_table=dict(translations or {}) or None)
        except Exception as exc:
            raise NotExportable(f"not exportable to ONNX: {exporter_reason(exc)}") from None
    return program.model_proto


def graph_summary(model) -> str:
    """What the exported graph is made of, e.g. "1 node: DeformConv" or "95 nodes: 20 Gather, ..."."""
    counts = Counter(node.op_type for node in model.graph.node)
    top = ", ".join(f"{n} {op}" if n > 1 else op for op, n in counts.most_common(6))
    more = ", ..." if len(counts) > 6 else ""
    total = sum(counts.values())
    return f"{total} node{'s' if total != 1 else ''}: {top}{more}"


def run_model(model, feeds: dict[str, np.ndarray], threads: int | None = None) -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime's CPU provider; RuntimeRejected with the runtime's message."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 4  # its errors come back as exceptions; its own log would repeat them on stderr
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise RuntimeRejected(f"the exported model wants inputs {missing} that the module's call does not have")
        return session.run(None, {n: feeds[n] for n in names})
    except RuntimeRejected:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise RuntimeRejected(f"onnxruntime refused the exported model: {text[0] if text else type(exc).__name__}") from None


def feeds_for(module: torch.nn.Module, args: tuple) -> dict[str, np.ndarray]:
    """The tensors of a call by the names the exporter gives graph inputs (the forward's parameter names)."""
    import inspect

    params = list(inspect.signature(module.forward).parameters)
    return {name: a.detach().cpu().contiguous().numpy() for name, a in zip(params, args) if isinstance(a, torch.Tensor)}


def run_exported(backend, case) -> tuple[torch.Tensor, str]:
    """The case's output computed by exporting the backend's kernel and running the model in onnxruntime."""
    module, args = ops.of(case).export_layer(case, backend.ops[case.op])
    translations = backend.onnx_translations() if backend.onnx_translations else {}
    model = export_model(module, args, translations)
    (out, *_) = run_model(model, feeds_for(module, args))
    return torch.from_numpy(np.array(out)), f"exported graph: {graph_summary(model)}"


def exporter(backend):
    """Where the backend's export runs: its own worker (isolated), an export worker (in-process torch
    code: the exporter may crash on it), or here (a framework behind a worker: not torch code, the
    exporter refuses it at once)."""
    if backend.onnx_exporter is not None:
        return backend.onnx_exporter
    if backend.in_worker:
        return lambda case: run_exported(backend, case)
    from dcnbench.worker.isolation import exporter

    return exporter(backend)

"""ext's deform_conv2d through torch.onnx.export: its translation to one ONNX DeformConv node (the
export check's `onnx_translations`). torch.export traces the op with the fake kernel the library
registers on load (fake.py). The pooling ops have no ONNX operator to become, so they are not
translated.
"""

from __future__ import annotations


def register_fake() -> None:
    """Load the library, which gives every op its fake kernel (library.register), so torch.export can
    trace it without running it."""
    from dcnbench.backends.ext import LIBRARY

    LIBRARY.ops()


def op_overload():
    """The forward op as torch.onnx.export's translation table keys it (the library loaded first)."""
    from dcnbench.backends.ext import LIBRARY

    return LIBRARY.ops().deform_conv2d_forward.default


def translations() -> dict:
    """{ext's forward op: its onnxscript translation} for torch.onnx.export's custom_translation_table."""
    from dcnbench.ops.deform_conv2d.onnx import translation

    return {op_overload(): translation}

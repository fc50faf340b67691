"""ext's deform_conv2d through torch.onnx.export: its translation to one ONNX DeformConv node (the
export check's `onnx_translations`), for the native library and the emulated CUDA one alike.
torch.export traces the op with the fake kernel each library registers on load (fake.py). The
pooling ops have no ONNX operator to become, so they are not translated.
"""

from __future__ import annotations


def _library(library=None):
    if library is None:
        from dcnbench.backends.ext import LIBRARY as library
    return library


def register_fake(library=None) -> None:
    """Load the library, which gives every op its fake kernel (library.register), so torch.export can
    trace it without running it."""
    _library(library).ops()


def op_overload(library=None):
    """The forward op as torch.onnx.export's translation table keys it (the library loaded first)."""
    return _library(library).ops().deform_conv2d_forward.default


def translations(library=None) -> dict:
    """{the library's forward op: its onnxscript translation} for torch.onnx.export's custom_translation_table."""
    from dcnbench.ops.deform_conv2d.onnx import translation

    return {op_overload(library): translation}

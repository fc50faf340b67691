"""The ONNX export check: each backend's kernel in a small layer, exported with torch.onnx.export
(dynamo, opset 19), run in onnxruntime, against the float64 oracle; and `dcnbench export-check`."""

import json
import textwrap
from dataclasses import replace

import pytest
import torch

from dcnbench.backends import get
from dcnbench.backends.ext import onnx as ext_onnx
from dcnbench.checking.export_check import check_module
from dcnbench.checking.onnx_export import exporter_reason, run_exported
from dcnbench.checking.verify import default_suite, run_verify, select_cases
from tests.conftest import PLANTED, invoke

EXPORT = select_cases(default_suite(), ["export-"], None)


def test_the_family_covers_bands_asymmetry_groups_and_both_variants():
    assert len(EXPORT) == 4 and {c.dtype for c in EXPORT} == {"float64", "float32"}
    geos = [c.geometry for c in EXPORT]
    assert all(c.offsets == "border" for c in EXPORT) and {c.mask for c in EXPORT} == {True, False}
    assert any(g.stride[0] != g.stride[1] and g.padding[0] != g.padding[1] and g.dilation[0] != g.dilation[1] for g in geos)
    assert any(g.groups > 1 for g in geos) and all(g.offset_groups > 1 for g in geos)


def test_torchvision_and_ext_export_to_one_deformconv_node_and_agree_with_the_oracle():
    for name in ("torchvision", "ext", "ext-cuda-emu"):
        backend = get(name)
        assert backend.check is None or backend.check() is None
        for r in run_verify(backends=[backend], cases=EXPORT):
            assert r.status == "pass" and r.message == "exported graph: 1 node: DeformConv", (name, r.case.case_id, r.message)
            assert r.quantities[0].rel_err < (1e-15 if r.case.dtype == "float64" else 1e-6)


def _exported_here(backend):
    """The backend with its export check run in this process (a translation is code: it cannot travel
    to the export worker)."""
    return replace(backend, onnx_exporter=lambda case: run_exported(backend, case))


def _ext_translated_by(fn):
    return _exported_here(replace(get("ext"), onnx_translations=lambda: (ext_onnx.translations(),
                                                                         {ext_onnx.op_overload(): fn})[1]))


def _mask_dropped(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                  dil_h: int, dil_w: int, groups: int, offset_groups: int):
    """A planted translation bug: the mask left out (DCNv1 computed; the output keeps its shape)."""
    from onnxscript import opset19 as op

    return op.DeformConv(input, weight, offset, bias, None, strides=[stride_h, stride_w], pads=[pad_h, pad_w, pad_h, pad_w],
                         dilations=[dil_h, dil_w], group=groups, offset_group=offset_groups)


def _two_pads(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
              dil_h: int, dil_w: int, groups: int, offset_groups: int):
    """A model onnxruntime refuses: `pads` needs four values."""
    from onnxscript import opset19 as op

    return op.DeformConv(input, weight, offset, bias, mask, strides=[stride_h, stride_w], pads=[pad_h, pad_w],
                         dilations=[dil_h, dil_w], group=groups, offset_group=offset_groups)


def test_a_wrong_translation_fails_and_a_model_the_runtime_refuses_is_an_error_row():
    wrong = run_verify(backends=[_ext_translated_by(_mask_dropped)], cases=EXPORT[:1])[0]
    assert wrong.status == "fail" and not wrong.quantities[0].ok
    refused = run_verify(backends=[_ext_translated_by(_two_pads)], cases=EXPORT[:1])[0]
    assert refused.status == "error" and refused.message.startswith("onnxruntime refused the exported model:"), refused.message
    assert "pads has incorrect size" in refused.message  # the runtime's own words


def test_what_cannot_be_exported_is_unsupported_with_the_exporters_reason():
    untranslated = _exported_here(replace(get("ext"), onnx_translations=lambda: (ext_onnx.register_fake(), {})[1]))
    r = run_verify(backends=[untranslated], cases=EXPORT[:1])[0]
    assert r.status == "unsupported" and r.message.startswith("not exportable to ONNX: "), r.message
    assert "\n" not in r.message and "\x1b" not in r.message and "<class" not in r.message


def test_a_kernel_outside_torch_is_unsupported_with_its_backends_reason_in_one_log_line(tmp_path):
    # MXNet, paddle (worker processes) and onnxruntime (an ONNX model) have no torch graph to export:
    # their own reason, not the exporter's ".numpy() is not supported for tensor subclasses".
    res = invoke("verify", "--backend", "onnxruntime", "--case", "export-", "--json", str(tmp_path / "v.json"),
                 "--csv", str(tmp_path / "v.csv"))
    assert res.returncode == 0, res.stdout + res.stderr
    reason = get("onnxruntime").unsupported_reasons["export"]
    rows = json.loads((tmp_path / "v.json").read_text())["records"]
    assert len(rows) == len(EXPORT) and {(r["status"], r["message"]) for r in rows} == {("unsupported", reason)}
    # Its line in the log is longer than the log's width; it stays one line all the same.
    line = next(ln for ln in res.stdout.splitlines() if "onnxruntime: 4 case(s)" in ln)
    assert len(line) > 250 and reason in line and line.endswith("(+1)]"), line


def test_a_planted_bug_exported_through_a_plugin_worker_is_caught(tmp_path):
    res = invoke("verify", "--impl", f"{PLANTED}:swapped_offsets", "--backend", "torchvision", "--case", "export-",
                 "--dtype", "float32", "--json", str(tmp_path / "v.json"), "--csv", str(tmp_path / "v.csv"))
    assert res.returncode == 1, res.stdout + res.stderr
    rows = json.loads((tmp_path / "v.json").read_text())["records"]
    assert {r["status"] for r in rows if r["backend"] == "swapped_offsets"} == {"fail"}
    assert {r["status"] for r in rows if r["backend"] == "torchvision"} == {"pass"}
    assert all("DeformConv" in r["message"] for r in rows)


def test_exporter_reason_is_one_clean_line():
    text = ("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m\n\n## Exception summary\n\n"
            "<class 'torch._subclasses.fake_tensor.UnsupportedOperatorException'>: mylib.op.default\n\nmore")
    assert exporter_reason(RuntimeError(text)) == "UnsupportedOperatorException: mylib.op.default"


MODEL = '''
import torch
from torchvision.ops import DeformConv2d


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Conv2d(4, 18, 3, padding=1)
        self.dcn = DeformConv2d(4, 6, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.dcn(x, 3 * self.offset(x)))


def make():
    torch.manual_seed(0)
    return Net(), torch.randn(2, 4, 9, 9)


class ThroughARuntime(torch.nn.Module):
    def forward(self, x, offset, weight):
        from dcnbench.backends.onnxruntime import deform_conv2d
        return deform_conv2d(x, offset, weight, padding=(1, 1))


def unexportable():
    return ThroughARuntime(), (torch.randn(1, 2, 5, 5), torch.zeros(1, 18, 5, 5), torch.randn(3, 2, 3, 3))


def not_a_pair():
    return torch.zeros(3)
'''


def test_export_check_answers_for_a_users_own_model(tmp_path):
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    ok = invoke("export-check", f"{tmp_path / 'model.py'}:make", "--onnx", str(tmp_path / "m.onnx"))
    assert ok.returncode == 0 and "DeformConv" in ok.stdout and "pass" in ok.stdout, ok.stdout + ok.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 0
    no = invoke("export-check", f"{tmp_path / 'model.py'}:unexportable", "--in-process")
    assert no.returncode == 1 and "unsupported: not exportable to ONNX:" in no.stdout, no.stdout + no.stderr
    for spec, text in ((f"{tmp_path / 'model.py'}:not_a_pair", "expected (module, inputs)"),
                       (f"{tmp_path / 'nope.py'}:make", "does not exist"), ("model.py", "malformed")):
        bad = invoke("export-check", spec, "--in-process")
        assert bad.returncode == 2 and text in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_export_check_catches_an_export_that_computes_something_else():
    ext = get("ext")
    assert ext.check() is None

    class Layer(torch.nn.Module):
        def forward(self, x, offset, weight, mask):
            return ext.ops["deform_conv2d"](x, offset, weight, padding=(1, 1), mask=mask)

    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 4, 6, 6, generator=g), 2 * torch.randn(1, 36, 6, 6, generator=g),
              torch.randn(3, 4, 3, 3, generator=g), torch.rand(1, 18, 6, 6, generator=g))
    right = check_module(Layer(), inputs, ext.onnx_translations())
    assert right.status == "pass" and right.graph == "1 node: DeformConv", right
    wrong = check_module(Layer(), inputs, {ext_onnx.op_overload(): _mask_dropped})
    assert wrong.status == "fail" and not wrong.outputs[0].onnx.ok


MODELS = PLANTED.with_name("faulty_models.py")


def test_export_check_fails_a_model_that_is_not_finite():
    # An all-NaN output used to pass (NaN matched NaN): the float64 run must be finite to compare anything,
    # and an exported output that is not finite where it is fails, saying so.
    for factory, says in (("all_nan", "gives NaN or infinity (output 0: 6 of 6)"),
                          ("overflows_in_float32", "inf: the reference reaches 2.688e+43, past float32's largest")):
        r = invoke("export-check", f"{MODELS}:{factory}", "--in-process")
        assert r.returncode == 1 and "fail:" in r.stdout and says in r.stdout, (factory, r.stdout)


def test_export_check_runs_the_factory_in_a_worker_that_may_exit_or_crash():
    r = invoke("export-check", f"{MODELS}:factory_exits")  # exit 0 and no output, before
    assert r.returncode == 2 and "the factory called sys.exit(0)" in r.stderr and "hint:" in r.stderr, r.stderr
    r = invoke("export-check", f"{MODELS}:crashes_when_checked")
    assert r.returncode == 1 and "died (killed by SIGSEGV)" in r.stdout, r.stdout + r.stderr

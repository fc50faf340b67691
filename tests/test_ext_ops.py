"""ext's ops as torch operators: torch.library.opcheck passes for every op (schema, autograd
registration, fake kernels, AOT dispatch), torch.compile(fullgraph=True) and torch.export trace
through them, and a wrong argument raises RuntimeError (also a ValueError) with "got X, expected Y",
as torchvision does, in ext and in the pytorch oracles alike."""

import pytest
import torch
import torchvision

from dcnbench.backends import ext, pytorch
from dcnbench.ops.contract import ContractError

F64 = torch.float64
ROIS = torch.tensor([[0, 1, 1, 10, 9], [1, -2, 0, 6, 12]], dtype=F64)


MSDA_LEVELS = (torch.tensor([[3, 4], [2, 2]]), torch.tensor([0, 12]))


def grad(*ts):
    return [t.clone().requires_grad_(True) for t in ts]


def samples():
    """(op name, args) for every ext op: with and without the optional tensors, both backward modes."""
    gen = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    x, w, off, m, b = r(2, 4, 6, 7), r(6, 2, 3, 3), r(2, 36, 6, 7), r(2, 18, 6, 7).sigmoid(), r(6)
    x8, roi_off, trans = r(2, 8, 6, 7), r(2, 2, 3, 3), r(2, 4, 3, 3)
    geo = [1, 1, 1, 1, 1, 1, 2, 2]
    nhwc, v3_off, v3_mask, v4_om = r(2, 5, 6, 8), r(2, 5, 6, 36), r(2, 5, 6, 18).softmax(-1), r(2, 5, 6, 56)
    group_geo = [3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 0.5]  # kernel, stride, pad, dilation, group, group_channels, offset_scale
    msda_value = r(2, 16, 2, 3)
    msda_loc = torch.rand(2, 5, 2, 2, 2, 2, generator=gen, dtype=F64) * 1.2 - 0.1
    msda_attn = r(2, 5, 2, 2, 2)
    return [
        ("deform_conv2d_forward", (*grad(x, w, off, m, b), *geo)),
        ("deform_conv2d_forward", (*grad(x, w, off), None, None, *geo)),
        ("deform_conv2d_backward", (r(2, 6, 6, 7), x, w, off, m, *geo, False)),
        ("deform_conv2d_backward", (r(2, 6, 6, 7), x, w, off, None, *geo, True)),
        ("roi_pool_forward", (*grad(x), ROIS, *grad(roi_off), 3, 3, 0.5, 2, 0.1)),
        ("roi_pool_forward", (*grad(x), ROIS, None, 3, 3, 0.5, 0, 0.1)),
        ("roi_pool_backward", (r(2, 4, 3, 3), x, ROIS, roi_off, 3, 3, 0.5, 2, 0.1, False)),
        ("roi_pool_backward", (r(2, 4, 3, 3), x, ROIS, None, 3, 3, 0.5, 0, 0.1, True)),
        ("psroi_pool_forward", (*grad(x8), ROIS, *grad(trans), 0.5, 2, 2, 3, 3, 2, 0.1)),
        ("psroi_pool_forward", (*grad(x8), ROIS, None, 0.5, 2, 2, 3, 3, 2, 0.0)),
        ("psroi_pool_backward", (r(2, 2, 3, 3), x8, ROIS, trans, 0.5, 2, 2, 3, 3, 2, 0.1, False)),
        ("psroi_pool_backward", (r(2, 2, 3, 3), x8, ROIS, None, 0.5, 2, 2, 3, 3, 2, 0.0, True)),
        # DCNv3/DCNv4: (2, 5, 6) map, 2 groups of 4 channels, 3x3 (P = 9), pad 1; DCNv4 packs 2*27 lanes into 56.
        ("dcnv3_forward", (*grad(nhwc, v3_off, v3_mask), *group_geo, False)),
        ("dcnv3_forward", (*grad(nhwc, v3_off[..., :32], v3_mask[..., :16]), *group_geo, True)),
        ("dcnv3_backward", (r(2, 5, 6, 8), nhwc, v3_off, v3_mask, *group_geo, False)),
        ("dcnv4_forward", (*grad(nhwc, v4_om), *group_geo, False, False)),
        ("dcnv4_forward", (*grad(nhwc, v4_om), *group_geo, False, True)),
        ("dcnv4_backward", (r(2, 5, 6, 8), nhwc, v4_om, *group_geo, False, True)),
        # Multi-scale deformable attention: levels 3x4 and 2x2 (S = 16), 2 heads of 3 channels, 5 queries, 2 points.
        ("ms_deform_attn_forward", (*grad(msda_value), *MSDA_LEVELS, *grad(msda_loc, msda_attn), 64)),
        ("ms_deform_attn_backward", (r(2, 5, 6), msda_value, *MSDA_LEVELS, msda_loc, msda_attn, 64, False)),
    ]


@pytest.fixture(scope="module")
def ops():
    return ext.LIBRARY.ops()


@pytest.mark.parametrize("name, args", samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck_passes_for_every_op(ops, name, args):
    result = torch.library.opcheck(getattr(ops, name), args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_every_op_in_the_library_is_covered():
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("dcnbench_ext::")}
    assert schemas and schemas <= {name for name, _ in samples()}, schemas


class DeformBlock(torch.nn.Module):
    """A DCNv2 block as a detector would write it: offsets and mask from a conv, then ext's op."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.offsets = torch.nn.Conv2d(4, 27, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(6, 4, 3, 3) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(6))

    def forward(self, x):
        o = self.offsets(x)
        return ext.deform_conv2d(x, o[:, :18], self.weight, self.bias, padding=(1, 1), mask=o[:, 18:].sigmoid()).relu()


def test_torch_compile_fullgraph_traces_through_ext_and_matches_eager(ops):
    block, x = DeformBlock(), torch.randn(2, 4, 8, 8)
    eager = block(x)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    # aot_eager: dynamo and AOTAutograd trace the graph (fake kernels, the registered autograd) without
    # inductor's code generation, which only costs minutes here.
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    assert torch.equal(out, eager)
    assert all(torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6) for p, g in zip(block.parameters(), eager_grads))


def test_the_pooling_ops_compile_fullgraph_and_refuse_bad_rois_when_they_run(ops):
    x, off, trans = torch.randn(2, 4, 6, 7, dtype=F64), torch.randn(2, 2, 3, 3, dtype=F64), torch.randn(2, 4, 3, 3, dtype=F64)

    def pools(x, rois, off, trans):
        return (ext.deform_roi_pool(x, rois, off, 3, 0.5, 2, 0.1),
                ext.deform_psroi_pool(torch.cat([x, x], 1), rois, trans, 0.5, 2, 2, 3, 3, 2, 0.1))

    compiled = torch.compile(pools, fullgraph=True, backend="aot_eager")
    assert all(torch.equal(a, b) for a, b in zip(compiled(x, ROIS, off, trans), pools(x, ROIS, off, trans)))
    bad = ROIS.clone()
    bad[0, 0] = 5  # no such image
    with pytest.raises(RuntimeError, match="batch index"):
        compiled(x, bad, off, trans)


@pytest.mark.any_cpu
def test_torch_export_holds_the_ext_op(ops):
    block, x = DeformBlock(), torch.randn(2, 4, 8, 8)
    exported = torch.export.export(block, (x,))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert "dcnbench_ext.deform_conv2d_forward.default" in targets
    assert torch.equal(exported.module()(x), block(x))


# ---- bad arguments: RuntimeError, as torchvision ------------------------------------------------------


@pytest.mark.parametrize("backend", [ext, pytorch], ids=["ext", "pytorch"])
def test_wrong_sizes_raise_runtime_error_like_torchvision(backend, ops):
    """torchvision's TestDeformConv.test_wrong_sizes: a DeformConv2d layer (in 6, out 2, kernel 3x2,
    groups 2) given offsets or a mask with too few channels raises RuntimeError."""
    layer = torchvision.ops.DeformConv2d(6, 2, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2).double()
    x = torch.rand(10, 6, 5, 4, dtype=F64)
    ho, wo = 2, 3
    offset, mask = torch.rand(10, 2 * 3 * 2, ho, wo, dtype=F64), torch.rand(10, 3 * 2, ho, wo, dtype=F64)
    fn = backend.backend().ops["deform_conv2d"]
    for wrong in ({"offset": offset[:, :2]}, {"mask": mask[:, :2]}):
        args = {"offset": offset, "mask": mask} | wrong
        with pytest.raises(RuntimeError):  # torchvision itself
            layer(x, args["offset"], args["mask"])
        with pytest.raises(RuntimeError, match="expected") as err:  # ours, with what was got and expected
            fn(x, args["offset"], layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, args["mask"])
        assert isinstance(err.value, ValueError) and isinstance(err.value, ContractError)


@pytest.mark.parametrize("backend", [ext, pytorch], ids=["ext", "pytorch"])
def test_bad_pooling_arguments_raise_runtime_error(backend, ops):
    ops_ = backend.backend().ops
    x = torch.zeros(1, 4, 5, 5, dtype=F64)
    with pytest.raises(RuntimeError, match=r"rois must have shape \(K, 5\).*got \(2, 4\)"):
        ops_["deform_roi_pool"](x, torch.zeros(2, 4, dtype=F64), None, 2)
    with pytest.raises(RuntimeError, match=r"trans has shape \(1, 2, 3, 3\), expected \(1, 2, 2, 2\)"):
        ops_["deform_psroi_pool"](x, torch.zeros(1, 5, dtype=F64), torch.zeros(1, 2, 3, 3, dtype=F64), 1.0, 1, 2, 2)


def test_mismatched_dtypes_are_a_contract_error(ops):
    x = torch.zeros(1, 4, 5, 5)
    with pytest.raises(RuntimeError, match="weight is torch.float64 on cpu, expected torch.float32"):
        ext.deform_conv2d(x, torch.zeros(1, 18, 3, 3), torch.zeros(2, 4, 3, 3, dtype=F64))


def test_a_torch_that_still_checks_cublas_gets_the_one_line_fix():
    from dcnbench.backends.ext.library import CUBLAS_CHECKED, cublas_problem

    # torch 2.15 dropped the check (pytorch PR #161749) and the docstring that announced it.
    assert CUBLAS_CHECKED is ("CUBLAS_WORKSPACE_CONFIG" in torch.use_deterministic_algorithms.__doc__)
    problem = cublas_problem("cuda", True, None, checked=True)
    assert "export CUBLAS_WORKSPACE_CONFIG=:4096:8" in problem and "\n" not in problem
    assert cublas_problem("cuda", True, ":16:8", checked=True) is None
    assert cublas_problem("cuda", False, None, checked=True) is None  # torch's flag is what the check keys on
    assert cublas_problem("cpu", True, None, checked=True) is None
    assert cublas_problem("cuda", True, None, checked=False) is None

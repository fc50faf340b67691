import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcnbench.errors import UsageError
from dcnbench.ops.deform_conv2d.contract import ConvGeometry
from dcnbench.checking.verify import default_suite
from dcnbench import ops
from dcnbench.ops.deform_conv2d.contract import PRESETS, format_shape, parse_shape
from dcnbench.ops.deform_conv2d.workloads import make_inputs


def test_parse_shape_full_grammar():
    geo = parse_shape("8,64,56,56:32,3,2:2x1,1x0,1x2,2,4")
    assert geo == ConvGeometry(n=8, c=64, h=56, w=56, o=32, kh=3, kw=2, stride=(2, 1), padding=(1, 0),
                               dilation=(1, 2), groups=2, offset_groups=4)


def test_parse_shape_defaults_to_same_padding():
    geo = parse_shape("1,4,9,9:4,5,3")
    assert geo.padding == (2, 1) and (geo.ho, geo.wo) == (9, 9)


@pytest.mark.parametrize("spec", ["8,64,56:64,3,3", "8,64,56,56", "a,64,56,56:64,3,3", "8,64,56,56:64,3,3:1,1",
                                  "8,64,56,56:64,3,3:1,1,1,3", "8,64,5,5:64,9,9:1,0,1", "8,64,56,56:64,3,3:1,1,1,1,5",
                                  "8,64,56,56:64,,3"])
def test_malformed_shapes_are_usage_errors(spec):
    with pytest.raises(UsageError) as exc:
        parse_shape(spec)
    assert "N,C,H,W:O,kh,kw" in exc.value.hint


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 64), c=st.sampled_from([4, 8, 16]), h=st.integers(3, 40), w=st.integers(3, 40),
       o=st.sampled_from([4, 8]), k=st.integers(1, 3), s=st.integers(1, 3), d=st.integers(1, 2),
       groups=st.sampled_from([1, 2, 4]), og=st.sampled_from([1, 2, 4]))
def test_format_and_parse_round_trip(n, c, h, w, o, k, s, d, groups, og):
    geo = ConvGeometry(n=n, c=c, h=h, w=w, o=o, kh=k, kw=k, stride=(s, s), padding=(k // 2, 0), dilation=(d, d),
                       groups=groups, offset_groups=og)
    if geo.problems():
        return
    assert parse_shape(format_shape(geo)) == geo


def test_presets_parse_and_include_the_papers_layer():
    for name in PRESETS:
        assert ops.preset(name, "deform_conv2d")
    [conv5] = ops.preset("resnet101-conv5")
    assert (conv5.c, conv5.o, conv5.dilation, conv5.h, conv5.w) == (512, 512, (2, 2), 38, 63)
    with pytest.raises(UsageError):
        ops.preset("nope")


def test_inputs_are_seeded_and_shaped():
    case = default_suite()[0]
    a, b = make_inputs(case), make_inputs(case)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k: tuple(v.shape) for k, v in a.items()} == case.geometry.shapes(mask=True, bias=True)


def test_noncontiguous_case_gives_noncontiguous_tensors():
    case = next(c for c in default_suite() if not c.contiguous)
    t = make_inputs(case)
    assert not any(v.is_contiguous() for v in t.values())
    flat = make_inputs(type(case)(**{**case.__dict__, "contiguous": True}))
    assert all(torch.equal(t[k], flat[k]) for k in t)


def test_digest_changes_with_the_definition():
    a, b = default_suite()[:2]
    assert a.digest() != b.digest() and a.digest() == default_suite()[0].digest()

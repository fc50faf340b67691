"""An operator is one unit behind the registry: a toy operator registered from this file alone is
listed, verified, timed, probed as a plugin and reported by every stage, with no stage edited."""

import json
import textwrap
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from dcnbench import ops
from dcnbench.errors import UsageError
from dcnbench.ops.case import DTYPES, Case
from dcnbench.ops.contract import geometry_from_dict
from dcnbench.ops.spec import OpSpec
from tests.conftest import invoke

TOY = "toy_scale"


@dataclass(frozen=True)
class ToyGeometry:
    n: int
    c: int
    h: int
    w: int
    op: str = TOY

    @classmethod
    def from_dict(cls, d):
        return geometry_from_dict(cls, d)

    @property
    def output_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def shape_text(self):
        return f"{self.n},{self.c},{self.h},{self.w}"

    def problems(self):
        return [] if min(self.n, self.c, self.h, self.w) > 0 else ["sizes must be positive"]


def parse_shape(text: str) -> ToyGeometry:
    try:
        geo = ToyGeometry(*(int(t) for t in text.split(",")))
    except (TypeError, ValueError):
        raise UsageError(f"malformed --shape '{text}'", hint="write N,C,H,W") from None
    if geo.problems():
        raise UsageError(f"invalid --shape '{text}'", hint="write N,C,H,W")
    return geo


@dataclass(frozen=True, kw_only=True)
class ToyCase(Case):
    geometry: ToyGeometry
    differentiable: ClassVar[tuple[str, ...]] = ("input", "weight")
    geometry_type: ClassVar[type] = ToyGeometry

    @property
    def variant(self):
        return "toy"

    def inputs(self, device="cpu"):
        gen = torch.Generator().manual_seed(self.seed)
        g = self.geometry
        t = {"input": torch.randn(g.n, g.c, g.h, g.w, generator=gen, dtype=torch.float64),
             "weight": torch.randn(g.c, generator=gen, dtype=torch.float64)}
        return {k: v.to(DTYPES[self.dtype]).to(device) for k, v in t.items()}

    def call(self, fn, t):
        return fn(t["input"], t["weight"])


def toy_scale(input, weight):
    """The toy operator's oracle: scale each channel."""
    return input * weight[None, :, None, None]


CASE = ToyCase(name="toy-basic", geometry=ToyGeometry(2, 3, 4, 5), seed=7)
SPEC = OpSpec(
    name=TOY, summary="a toy operator registered by a test", signature="(input, weight)", returns="(N, C, H, W)",
    shape_grammar="N,C,H,W", shape_example="2,3,4,5", parse_shape=parse_shape, geometry_type=ToyGeometry,
    presets={"toy-preset": ("2,3,8,8",)}, default_preset="toy-preset",
    suite=lambda seed: [CASE, ToyCase(name="toy-basic", geometry=CASE.geometry, seed=7, dtype="float32")],
    differentiable=ToyCase.differentiable, case_from_dict=ToyCase.from_dict,
    oracle=toy_scale,
    speed_case=lambda s: ToyCase(name="speed", geometry=s.geometry, dtype=s.dtype, seed=s.seed),
    probe_cases=lambda dtype: [ToyCase(name="probe", geometry=ToyGeometry(1, 2, 3, 3), dtype=dtype)],
)


@pytest.fixture
def toy(tmp_path):
    ops.register(SPEC)
    good = tmp_path / "toy_plugins.py"
    good.write_text(textwrap.dedent("""
        def mine(input, weight):
            return input * weight[None, :, None, None]
        mine.dcnbench_op = "toy_scale"

        def off_by_a_little(input, weight):
            return input * weight[None, :, None, None] * 1.001
        off_by_a_little.dcnbench_op = "toy_scale"

        def wrong_shape(input, weight):
            return input[:, :1]
        wrong_shape.dcnbench_op = "toy_scale"
    """))
    yield good
    ops.unregister(TOY)


def test_verify_lists_and_runs_the_toy_operator(toy, tmp_path):
    listed = invoke("verify", "--op", TOY, "--list")
    assert listed.returncode == 0 and "toy-basic/float64" in listed.stdout and "toy-basic/float32" in listed.stdout

    out = tmp_path / "verify.json"
    res = invoke("verify", "--op", TOY, "--backend", "pytorch", "--impl", f"{toy}:mine", "--impl", f"{toy}:off_by_a_little",
                 "--json", str(out), "--csv", str(tmp_path / "v.csv"))
    assert res.returncode == 1, res.stdout + res.stderr  # the planted error is caught
    records = json.loads(out.read_text())["records"]
    status = {(r["case_id"], r["backend"]): r["status"] for r in records}
    assert status[("toy-basic/float64", "pytorch")] == "pass"
    assert status[("toy-basic/float64", "mine")] == "pass"
    assert status[("toy-basic/float64", "off_by_a_little")] == "fail"
    quantities = {q["quantity"].split("@")[0] for r in records for q in r["quantities"]}
    assert quantities == {"output", "grad_input", "grad_weight"}  # and each gradient under every cotangent layout

    report = invoke("report", str(out), "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "grad_weight" in md and "off_by_a_little" in md and "toy-basic/float64" in md


def test_a_broken_toy_plugin_fails_its_probe(toy):
    res = invoke("verify", "--op", TOY, "--impl", f"{toy}:wrong_shape")
    assert res.returncode == 2 and "failed its probe call as toy_scale" in res.stderr and "(input, weight)" in res.stderr


def test_speed_times_the_toy_preset(toy, tmp_path):
    out = tmp_path / "speed.json"
    res = invoke("speed", "--preset", "toy-preset", "--backend", "pytorch", "--impl", f"{toy}:mine", "--repeat", "3",
                 "--warmup", "0", "--no-memory", "--json", str(out), "--csv", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert {(r["op"], r["backend"], r["status"]) for r in doc["records"]} == {(TOY, "pytorch", "ok"), (TOY, "mine", "ok")}
    assert "2,3,8,8" in res.stdout
    # The same preset name works through the gate's workload parser.
    assert [g.shape_text for g in ops.preset("toy-preset")] == ["2,3,8,8"]


def test_unknown_names_list_the_registered_ones(toy):
    with pytest.raises(UsageError, match="unknown --op"):
        ops.get("toy")
    assert TOY in ops.names() and "toy-preset" in ops.preset_names()

"""`dcnbench report` end to end on a real (small) run."""

import pytest

from dcnbench.backends import get
from dcnbench.results import document, environment, save
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.verify import default_suite
from dcnbench.checking.verify import run_verify
from dcnbench.ops.deform_conv2d.contract import parse_shape
from tests.conftest import invoke

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    backends = [get("pytorch"), get("torchvision")]
    env = environment(device="cpu", seed=0, backends=backends)
    cases = [c for c in default_suite() if c.case_id in ("v2/float32", "v1/float64", "v2/bfloat16")]
    # Two verify shards and one speed file: the report merges them.
    save(tmp / "v1.json", document("verify", env, run_verify(backends=backends, cases=cases[:1])))
    save(tmp / "v2.json", document("verify", env, run_verify(backends=backends, cases=cases[1:])))
    speed = run_speed(backends=backends + [get("conv2d")], cases=[SpeedCase(parse_shape("1,4,8,8:4,3,3"))], repeat=3,
                      warmup_s=0, measure_memory=True)
    save(tmp / "s.json", document("speed", env, speed, {"baseline": "conv2d"}))
    return [tmp / "v1.json", tmp / "v2.json", tmp / "s.json"]


def test_report_writes_markdown_html_and_plots(result_files, tmp_path):
    out = invoke("report", *map(str, result_files), "-o", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    plots = sorted(p.name for p in (tmp_path / "rep" / "plots").iterdir())
    assert plots == ["error-matrix.png", "peak-memory.png", "speed-ratios.png"]
    assert all((tmp_path / "rep" / "plots" / p).read_bytes().startswith(PNG) for p in plots)
    assert page.count("data:image/png;base64,") == 3 and "<img" in page and "src=\"plots/" not in page
    for p in plots:
        assert f"(plots/{p})" in md
    # At a glance: one row per backend with its counts (3 cases: torchvision has no bfloat16).
    assert "| pytorch | correct | 3 | 0 | 0 | 0 | 0 | 0 |" in md
    assert "| torchvision | correct | 2 | 0 | 0 | 0 | 1 | 0 |" in md
    assert "| conv2d | not verified |" in md and "## Environment" in md


def test_report_of_a_missing_file_is_a_usage_error(tmp_path):
    out = invoke("report", str(tmp_path / "none.json"), "-o", str(tmp_path))
    assert out.returncode == 2 and "cannot read" in out.stderr

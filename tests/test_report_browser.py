"""report.html in a real browser: Debian's headless Chromium loads it, decodes every image, and sees
no request leave the file. Skipped where Chromium is missing, unless DCNBENCH_REQUIRE_BROWSER=1
(`make test` sets it, after installing Chromium), where that is a failure."""

import os
import re
from pathlib import Path

import pytest

from tests.conftest import PLANTED, ROOT, invoke
from tests.report_browser import CHROMIUM, check_page

if not CHROMIUM.is_file():
    if os.environ.get("DCNBENCH_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"no Chromium at {CHROMIUM}: `make chromium` installs it (apt-get install chromium)")
    pytest.skip(f"no Chromium at {CHROMIUM} (make chromium)", allow_module_level=True)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report from a small real run: a passing backend, a planted bug, a speed table with its ratio plot."""
    out = tmp_path_factory.mktemp("report")
    v = invoke("verify", "--backend", "pytorch", "--impl", f"{PLANTED}:missing_offset_grad", "--case", "v2/float64",
               "--json", str(out / "v.json"), "--csv", str(out / "v.csv"), "--show", "none")
    assert v.returncode == 1
    s = invoke("speed", "--shape", "1,4,8,8:4,3,3", "--backend", "pytorch", "--backend", "conv2d", "--repeat", "3",
               "--warmup", "0", "--no-memory", "--json", str(out / "s.json"), "--csv", str(out / "s.csv"))
    assert s.returncode == 0, s.stderr
    r = invoke("report", str(out / "v.json"), str(out / "s.json"), "-o", str(out / "report"), "--title", "browser check")
    assert r.returncode == 0, r.stderr
    return out / "report" / "report.html"


def test_a_generated_report_loads_decodes_every_image_and_stays_in_the_file(report, tmp_path):
    shot = tmp_path / "report.png"
    check = check_page(report, shot)
    assert check.problems() == []
    assert check.title == "browser check" and {"Correctness", "Speed", "Environment"} <= set(check.headings)
    assert len(check.images) == 2 and all(i["width"] > 100 and i["height"] > 100 for i in check.images)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 10_000


def test_the_committed_example_report(tmp_path):
    check = check_page(ROOT / "reports" / "example" / "report.html")
    assert check.problems() == [] and len(check.images) >= 2


def test_the_check_sees_an_outside_request_and_an_image_that_does_not_decode(report, tmp_path):
    # Planted: a web font, an external image and a corrupt embedded one.
    page = tmp_path / "broken.html"
    text = report.read_text()
    text = text.replace("</style>", "</style><link rel='stylesheet' href='https://fonts.example.invalid/css'>", 1)
    text = re.sub(r'src="data:image/png;base64,[^"]{40}', 'src="data:image/png;base64,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', text, count=1)
    text = text.replace("</body>", '<img alt="remote" src="http://plots.example.invalid/speed.png"></body>')
    page.write_text(text)
    problems = check_page(page).problems()
    assert "request leaves the file: https://fonts.example.invalid/css" in problems
    assert "request leaves the file: http://plots.example.invalid/speed.png" in problems
    assert any(p.startswith("image 'error-matrix.png' does not decode") for p in problems)
    assert "image 'remote' is not embedded" in problems

"""Open a dcnbench report.html in a real headless browser (Debian's Chromium, driven by Playwright).

Checks what a reader needs: the page loads with its title and sections, every image decodes
(naturalWidth > 0), and no request leaves the file (the page is self-contained: anything but the
file itself and data: URIs is recorded and blocked). Optionally saves a full-page screenshot.

Playwright (a maintained driver, the Python package) is used with Debian's own Chromium through
`executable_path`, so nothing is downloaded: it sees every request the page makes (which a
`--dump-dom` run cannot), runs a probe in the page, and takes the screenshot, in one session.

    .venv/bin/python -m tests.report_browser REPORT.html [--screenshot PNG]   # exit 1 on a problem
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path(os.environ.get("DCNBENCH_CHROMIUM", "/usr/bin/chromium"))
# Flags that work on this machine (no sandbox as root, no GPU, no network chatter of its own).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PROBE = """() => ({
    title: document.title,
    headings: Array.from(document.querySelectorAll('h1, h2'), h => h.textContent),
    tables: document.querySelectorAll('table').length,
    images: Array.from(document.images, i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                                               inline: i.src.startsWith('data:image/png;base64,')})),
})"""


@dataclass
class PageCheck:
    title: str = ""
    headings: list[str] = field(default_factory=list)
    tables: int = 0
    images: list[dict] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # requests that would have left the file
    errors: list[str] = field(default_factory=list)  # page errors and console errors

    def problems(self) -> list[str]:
        found = [f"request leaves the file: {url}" for url in self.outside] + [f"page error: {e}" for e in self.errors]
        if not self.images:
            found.append("no image on the page")
        found += [f"image '{i['alt']}' does not decode (naturalWidth {i['width']})" for i in self.images
                  if not i["complete"] or i["width"] <= 0 or i["height"] <= 0]
        found += [f"image '{i['alt']}' is not embedded" for i in self.images if not i["inline"]]
        if not self.headings or not self.tables:
            found.append("the page has no headings or no tables: it did not load")
        return found


def check_page(page_path: Path, screenshot: Path | None = None, width: int = 1280) -> PageCheck:
    from playwright.sync_api import sync_playwright

    url = page_path.resolve().as_uri()
    result = PageCheck()

    def route(r):
        if r.request.url == url or r.request.url.startswith("data:"):
            r.continue_()
        else:
            result.outside.append(r.request.url)
            r.abort()

    with tempfile.TemporaryDirectory(prefix="dcnbench-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                                                       viewport={"width": width, "height": 900})
        try:
            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda exc: result.errors.append(str(exc)))
            page.on("console", lambda msg: result.errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda req: None if req.url == url or req.url.startswith("data:") or req.url in result.outside
                    else result.outside.append(req.url))
            page.goto(url, wait_until="load")
            probe = page.evaluate(PROBE)
            result.title, result.headings, result.tables, result.images = (probe["title"], probe["headings"], probe["tables"],
                                                                           probe["images"])
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        print(f"error: no Chromium at {CHROMIUM}\nhint: make chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    check = check_page(args.page, args.screenshot)
    print(f"{args.page}: '{check.title}', {len(check.headings)} headings, {check.tables} tables, "
          f"{sum(i['width'] > 0 for i in check.images)}/{len(check.images)} images decoded, "
          f"{len(check.outside)} request(s) leaving the file" + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    for problem in check.problems():
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if check.problems() else 0


if __name__ == "__main__":
    sys.exit(main())

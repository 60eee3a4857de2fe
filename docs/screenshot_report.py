"""Open a run's report.html in headless Chromium (a real browser) and save a screenshot.

    python docs/screenshot_report.py runs/ioi/report.html docs/report.png [--width 1300 --height 2600]

Needs Debian's ``chromium`` (``apt-get install chromium``). The page must render offline:
plotly.js is embedded in the report, and the browser runs with networking disabled, so a report
that fetched anything from the network would show empty figures here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1300)
    ap.add_argument("--height", type=int, default=2600)
    args = ap.parse_args()
    report = Path(args.report).resolve()
    if not report.exists():
        print(f"no report at {report}", file=sys.stderr)
        return 2
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    png = Path(args.png).resolve()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               f"--window-size={args.width},{args.height}", "--virtual-time-budget=15000",
               f"--screenshot={png}", report.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not png.exists():
        print(proc.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"wrote {png} ({png.stat().st_size:,} bytes) with {Path(browser).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

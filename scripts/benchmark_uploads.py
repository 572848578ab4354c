"""Server memory while visitors upload large files at once: what one upload really costs the running app.

    python scripts/benchmark_uploads.py                      # two 250 MB uploads at once to the CT scan page
    python scripts/benchmark_uploads.py --mb 250 --visitors 2

Starts `streamlit run streamlit_app.py` (this checkout's .streamlit/config.toml: `server.maxUploadSize`), opens one
headless Chromium page per visitor on the CT scan page, gives every page its file at once, and samples the server's
resident memory (its process and children, every 0.1 s) until every page shows its answer. The files are random
bytes, so that the app refuses them after reading only their first bytes ("No DICOM image was found"): the figure
is what Streamlit holds for an upload plus the app's checks, not an analysis. Prints a markdown table.
Needs Debian's chromium (/usr/bin/chromium) and Playwright.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psutil

from covid_models.benchmarking import CHROMIUM, CHROMIUM_ARGS, running_app

UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'
ANSWER = "No DICOM image was found"


def server_rss_mb(process: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=250, help="size of each upload (MB)")
    parser.add_argument("--visitors", type=int, default=2, help="uploads at the same time, one browser page each")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        files = []
        for index in range(args.visitors):
            path = Path(folder) / f"upload-{index}.zip"
            path.write_bytes(os.urandom(args.mb * 2**20))
            files.append(path)
        env = {"COVID_REVIEW_DB": str(Path(folder) / "reviews.sqlite3")}
        with running_app(env, timeout=300) as (url, process), sync_playwright() as playwright:
            server = psutil.Process(process.pid)
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            pages = []
            for _ in files:
                page = browser.new_page()
                page.set_default_timeout(600_000)
                page.goto(f"{url}/scan")
                page.wait_for_selector(UPLOAD_INPUT, state="attached")
                pages.append(page)
            time.sleep(5)
            before = server_rss_mb(server)
            start, peak, done = time.monotonic(), before, set()
            for page, path in zip(pages, files, strict=True):
                page.set_input_files(UPLOAD_INPUT, files=[str(path)])
            while len(done) < len(pages) and time.monotonic() - start < 900:
                peak = max(peak, server_rss_mb(server))
                for index, page in enumerate(pages):
                    if index not in done and page.get_by_text(ANSWER).count():
                        done.add(index)
                time.sleep(0.1)
            seconds = time.monotonic() - start
            time.sleep(5)
            after = server_rss_mb(server)
            browser.close()
    answered = f"{seconds:.0f}" + ("" if len(done) == len(pages) else f" ({len(done)} of {len(pages)} answered)")
    print(f"| uploads at once | MB each | server RSS before (MB) | peak (MB) | peak - before (MB) | after (MB) | "
          f"all answered in (s) |\n|---|---|---|---|---|---|---|\n| {args.visitors} | {args.mb} | {before:.0f} | "
          f"{peak:.0f} | {peak - before:.0f} | {after:.0f} | {answered} |")


if __name__ == "__main__":
    main()

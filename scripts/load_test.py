"""Concurrent browser sessions against one app on this machine (a benchmark, not a test: it prints a table).

    python scripts/load_test.py --sessions 4 --uploads-per-session 3
    python scripts/load_test.py --sessions 8 --uploads-per-session 2 --timeout 600 --data ../shared/data
    python scripts/load_test.py --url http://127.0.0.1:8501 --sessions 2      # an app already running here

Without --url it starts `streamlit run streamlit_app.py` on 127.0.0.1 on a free port (weights from --weights,
a throw-away review database) and stops it at the end. One headless Chromium (Debian's /usr/bin/chromium;
Playwright downloads nothing) opens one browser context per session, all at once; each session opens the
Analyze page and uploads its images one after another, each time waiting until that image's heatmap is shown.
Every upload is a different image (the page caches results by content), taken from the test split of the
data folder's X-ray set, else generated.

Reported: per-upload latency (file handed to the page -> its heatmap displayed) p50/p90/p99/max, page load
time, errors (timeouts, exceptions or error boxes shown by the page), wall time of the concurrent sessions.
Unless --no-warm-up, one untimed upload goes first, alone, so that loading the models (once per server)
is reported apart from the steady state. Bounded: at most
16 sessions, 20 uploads each, and --timeout seconds in all (at most 1800), after which what is left counts
as timed out. Only local apps can be targeted.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from covid_models.benchmarking import CHROMIUM, CHROMIUM_ARGS, chest_like_png, percentile, running_app, wait_healthy
from covid_models.training.data_folders import default_data_dir
from covid_models.training.manifests import DataError
from covid_models.training.splits import held_out_images

ROOT = Path(__file__).resolve().parents[1]

MAX_SESSIONS = 16
MAX_UPLOADS = 20
MAX_TOTAL_S = 1800
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'
# Run in the page: the shown error boxes (uncaught exceptions, and pages.shared.show_error's messages), and
# whether the n-th heatmap (one per analysed image, captioned "Grad-CAM for ...") is loaded.
PAGE_SCRIPTS = """
const errorBoxes = () => [
    ...document.querySelectorAll('[data-testid="stException"]'),
    ...[...document.querySelectorAll('[data-testid^="stAlertContent"]')]
        .filter(element => element.innerText.includes("Could not complete this step")),
];
const heatmapLoaded = n => {
    const images = [...document.querySelectorAll('[data-testid="stImage"]')]
        .filter(element => element.innerText.includes("Grad-CAM")).map(element => element.querySelector("img"));
    return images.length >= n && images[n - 1] !== null && images[n - 1].complete && images[n - 1].naturalWidth > 0;
};
"""
ERROR_TEXTS = "() => {" + PAGE_SCRIPTS + "return errorBoxes().map(element => element.innerText); }"
DONE = "([n, errors]) => {" + PAGE_SCRIPTS + "return errorBoxes().length > errors || heatmapLoaded(n); }"


@dataclass
class SessionResult:
    index: int
    page_load_s: float | None = None
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ images
def upload_images(data: Path | None, count: int) -> tuple[list[tuple[str, bytes]], str]:
    """`count` distinct (name, bytes): X-ray test-split images of the data folder, else generated ones."""
    if data is not None:
        try:
            paths = list(held_out_images(data, "xray")["image"])
        except (DataError, OSError) as error:
            print(f"<!-- no images from {data} ({error}); generated ones used -->")
        else:
            if len(paths) >= count:
                return [(Path(p).name, Path(p).read_bytes()) for p in paths[:count]], f"X-ray test split of {data}"
            print(f"<!-- only {len(paths)} test images in {data}; generated ones used -->")
    return [(f"generated-{seed:03d}.png", chest_like_png(size=384, seed=seed)) for seed in range(count)], \
        "generated images"


# ------------------------------------------------------------------------------------------------ server
def local_url(url: str) -> str:
    """The URL without a trailing slash, refused unless it points at this machine."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"--url must be an http(s) URL on 127.0.0.1 or localhost, got {url!r}")
    return url.rstrip("/")


@contextmanager
def streamlit_server(weights: Path, data: Path | None, startup_s: float) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on 127.0.0.1 (free port) with a throw-away review database."""
    with tempfile.TemporaryDirectory(prefix="load-test-") as scratch:
        env = {"COVID_WEIGHTS_DIR": str(weights), "COVID_REVIEW_DB": str(Path(scratch) / "reviews.sqlite3")}
        if data is not None:
            env["COVID_DATA_DIR"] = str(data)
        with running_app(env, timeout=startup_s) as (url, _process):
            yield url


# ----------------------------------------------------------------------------------------------- sessions
async def run_session(browser, url: str, index: int, images: list[tuple[str, bytes]], deadline: float
                      ) -> SessionResult:
    """One user: open the Analyze page, upload images one at a time, wait for each heatmap."""
    from playwright.async_api import Error as PlaywrightError

    result = SessionResult(index)
    context = await browser.new_context(viewport={"width": 1400, "height": 1600})
    try:
        page = await context.new_page()
        started = time.monotonic()
        await page.goto(url, timeout=_remaining_ms(deadline))
        await page.wait_for_selector(UPLOAD_INPUT, state="attached", timeout=_remaining_ms(deadline))
        result.page_load_s = time.monotonic() - started
        analysed = 0
        for count, (name, data) in enumerate(images, start=1):
            try:
                errors_before = len(await page.evaluate(ERROR_TEXTS))
                started = time.monotonic()
                await page.set_input_files(UPLOAD_INPUT, files=[{"name": name, "mimeType": "application/octet-stream",
                                                                 "buffer": data}], timeout=_remaining_ms(deadline))
                await page.wait_for_function(DONE, arg=[analysed + 1, errors_before], timeout=_remaining_ms(deadline),
                                             polling=100)
                elapsed = time.monotonic() - started
                shown = await page.evaluate(ERROR_TEXTS)
            except PlaywrightError as error:
                kind = "timeout" if "imeout" in f"{type(error).__name__} {error}" else "browser error"
                result.errors.append(f"upload {count} ({name}): {kind}: {str(error).splitlines()[0][:160]}")
                break
            if len(shown) > errors_before:
                result.errors.append(f"upload {count} ({name}): the page shows an error: "
                                     f"{shown[-1].removeprefix('error').strip()[:200]!r}")
            else:
                analysed += 1
                result.latencies_s.append(elapsed)
    except PlaywrightError as error:
        result.errors.append(f"page load: {str(error).splitlines()[0][:160]}")
    finally:
        await context.close()
    return result


def _remaining_ms(deadline: float) -> float:
    return max(1.0, (deadline - time.monotonic()) * 1000)


async def drive(url: str, per_session: list[list[tuple[str, bytes]]], warmup: tuple[str, bytes] | None,
                deadline: float) -> tuple[SessionResult | None, list[SessionResult], float]:
    """The warm-up upload alone (models load on the first request), then every session at once.

    Returns the warm-up's result, the sessions' results and the wall time of the concurrent part.
    """
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            warm = await run_session(browser, url, 0, [warmup], deadline) if warmup else None
            started = time.monotonic()
            results = await asyncio.gather(*(run_session(browser, url, i + 1, images, deadline)
                                             for i, images in enumerate(per_session)))
            return warm, list(results), time.monotonic() - started
        finally:
            await browser.close()


# ------------------------------------------------------------------------------------------------ report

def report(warm: SessionResult | None, results: list[SessionResult], uploads_per_session: int, wall_s: float,
           where: str) -> str:
    latencies = [s for r in results for s in r.latencies_s]
    loads = [r.page_load_s for r in results if r.page_load_s is not None]
    errors = [f"session {r.index}: {e}" for r in results for e in r.errors]
    attempted = len(results) * uploads_per_session
    lines = [
        f"<!-- {where} -->",
        "| sessions | uploads done / planned | errors | latency p50 (s) | p90 (s) | p99 (s) | max (s) "
        "| page load median (s) | wall time of the sessions (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {len(results)} | {len(latencies)} / {attempted} | {len(errors)} | {percentile(latencies, 50):.2f} "
        f"| {percentile(latencies, 90):.2f} | {percentile(latencies, 99):.2f} "
        f"| {max(latencies, default=float('nan')):.2f} | {percentile(loads, 50):.2f} | {wall_s:.1f} |",
    ]
    if warm is not None:
        lines += ["", f"Warm-up upload, alone, before the sessions (loads the models): "
                      f"{', '.join(f'{s:.2f} s' for s in warm.latencies_s) or 'failed'}"
                      + "".join(f"; {e}" for e in warm.errors)]
    if errors:
        lines += ["", "Errors:", *(f"- {e}" for e in errors)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4, help=f"concurrent browser sessions (1..{MAX_SESSIONS})")
    parser.add_argument("--uploads-per-session", type=int, default=3, help=f"1..{MAX_UPLOADS}")
    parser.add_argument("--timeout", type=float, default=300, help=f"seconds for the whole run (at most {MAX_TOTAL_S})")
    parser.add_argument("--url", help="an app already running on 127.0.0.1/localhost (default: start one)")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights", help="weights folder of the app started")
    parser.add_argument("--data", type=Path, default=default_data_dir() or ROOT.parent / "shared" / "data",
                        help="data folder whose X-ray test split is uploaded (generated images when absent)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="time the first upload too (it loads the models), instead of one untimed upload first")
    parser.add_argument("--startup-timeout", type=float, default=120, help="seconds for the started app to answer")
    args = parser.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        parser.error(f"--sessions must lie in 1..{MAX_SESSIONS}")
    if not 1 <= args.uploads_per_session <= MAX_UPLOADS:
        parser.error(f"--uploads-per-session must lie in 1..{MAX_UPLOADS}")
    if not 0 < args.timeout <= MAX_TOTAL_S:
        parser.error(f"--timeout must lie in (0, {MAX_TOTAL_S}] seconds")
    if not CHROMIUM.exists():
        parser.error(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    data = args.data if args.data and args.data.is_dir() else None
    images, origin = upload_images(data, args.sessions * args.uploads_per_session + 1)
    warmup = images.pop() if args.warm_up else None
    per_session = [images[i * args.uploads_per_session:(i + 1) * args.uploads_per_session]
                   for i in range(args.sessions)]

    def run(url: str) -> int:
        warm, results, wall_s = asyncio.run(drive(url, per_session, warmup, time.monotonic() + args.timeout))
        where = f"{url}, {origin}, timeout {args.timeout:g} s in all"
        print(report(warm, results, args.uploads_per_session, wall_s, where))
        return 1 if any(r.errors for r in results) else 0

    if args.url:
        url = local_url(args.url)
        wait_healthy(url, time.monotonic() + 10)
        return run(url)
    with streamlit_server(args.weights, data, args.startup_timeout) as url:
        return run(url)


if __name__ == "__main__":
    raise SystemExit(main())

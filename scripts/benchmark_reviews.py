"""What one rerun of the Review page costs in the review store, at 10,000 and 100,000 images (SQLite).

The page reads, per rerun, the session's header and counts (`session_info`: counts kept on the session row),
the item on screen (`item`) and where "Next unreviewed" leads (`next_unreviewed`). Opening a session once per
tab adds `open_session`, and `image_refs` only while images are missing from the server; a click adds
`record_verdict`; the summary (SQL counts) and the CSV are read only when asked for. Each database holds two
sessions of N images, half of them reviewed, so that a query counting more than its own session shows.
Prints a table; asserts nothing.

    PYTHONPATH=. python scripts/benchmark_reviews.py [--sizes 10000 100000] [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

from covid_models.benchmarking import percentile
from covid_models.imaging.io import content_hash
from covid_models.reviews.records import NewItem
from covid_models.reviews.store import ReviewStore


def _fill(store: ReviewStore, url: str, n: int) -> tuple[int, str]:
    """Two sessions of n images each; every other image of both has a verdict (written in bulk)."""
    reviewer = store.register("Dr Benchmark", "benchmark passphrase")
    ids = [store.start_session(reviewer, "model", "xray", [
        NewItem(content_hash(f"{s}/{i}".encode()), f"image-{i:06d}.png", ("covid", "normal", "pneumonia")[i % 3],
                (i % 100) / 100, 0.5) for i in range(n)]) for s in range(2)]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO verdicts (item_id, verdict, reviewer_label, note, decided_at, version) "
            "SELECT id, CASE WHEN position % 6 = 0 THEN 'disagree' ELSE 'agree' END, "
            "CASE WHEN position % 6 = 0 THEN 'covid' ELSE predicted_label END, '', CURRENT_TIMESTAMP, 1 "
            "FROM review_items WHERE position % 2 = 0"))
    engine.dispose()
    return ids[0], store.session_info(ids[0]).token


def _timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and 90th percentile of `repeats` calls, in milliseconds (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), percentile(times, 90)


def measure(n: int, repeats: int) -> None:
    """Print one table row per kind of work, for a fresh database with two sessions of `n` images."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'reviews.sqlite3'}"
        with ReviewStore(url) as store:
            session_id, token = _fill(store, url, n)
            reviewer = store.sign_in("Dr Benchmark", "benchmark passphrase")
            position = n // 2 + 1  # an unreviewed image in the middle

            def rerun() -> None:
                store.session_info(session_id)
                store.item(session_id, position)
                store.next_unreviewed(session_id, after=position)

            def record() -> None:
                store.record_verdict(session_id, position, "unsure")
                store.next_unreviewed(session_id, after=position)

            rows = [
                ("page rerun (header, current item, next)", rerun, repeats),
                ("opening the session (once per tab)", lambda: store.open_session(token, reviewer), repeats),
                ("image list (only while images are missing)", lambda: store.image_refs(session_id), repeats),
                ("recording a verdict (+ next unreviewed)", record, repeats),
                ("summary view (SQL counts, kappa)", lambda: store.summary(session_id), repeats),
                ("CSV export (on request)", lambda: store.export_csv(session_id), 3),
            ]
            for label, call, times in rows:
                median, p90 = _timed(call, times)
                print(f"{n:>8} | {label:<44} | {median:>9.1f} | {p90:>7.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"{'images':>8} | {'work':<44} | {'median ms':>9} | {'p90 ms':>7}")
    print(f"{'-' * 8}-|-{'-' * 44}-|-{'-' * 9}-|-{'-' * 7}")
    for n in args.sizes:
        measure(n, args.repeats)


if __name__ == "__main__":
    main()

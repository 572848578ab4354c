"""How long each answer of the review sign-in and registration takes, for names that exist and names that do not
(SQLite).

A wrong passphrase for a registered name, the same for a look-alike spelling of it (Cyrillic letters), a sign-in
under a name nobody registered, the registration of a free name and the refused registration of a taken one each
run one scrypt derivation; a blank or short passphrase is refused before any lookup, for known and unknown names
alike; a locked name is refused without checking. The times show whether an answer's cost tells a registered name
from a free one (its words say so for an unknown name or a taken one, by design). Each row uses its own names, so
no lockout interferes (one failure per name, no client address). Prints a table; asserts nothing.

    PYTHONPATH=. python scripts/benchmark_sign_in.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from covid_models.benchmarking import percentile
from covid_models.reviews.records import ReviewError, SignInThrottled
from covid_models.reviews.store import ReviewStore


def _timed(answer: Callable[[int], object], repeats: int) -> tuple[float, float]:
    """Median and 90th percentile in milliseconds of `answer(i)` for i in range(repeats); refusals count as answers."""
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        with contextlib.suppress(ReviewError):
            answer(index)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), percentile(times, 90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    # one warning per failure would drown the table
    logging.getLogger("covid_models.reviews.store").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder, ReviewStore(f"sqlite:///{Path(folder) / 'r.sqlite3'}") as store:
        for index in range(args.repeats):
            store.register(f"Dr Known {index}", "the right passphrase")
        rows = [
            ("wrong passphrase, registered name", lambda i: store.sign_in(f"Dr Known {i}", "a wrong passphrase")),
            ("wrong passphrase, look-alike of a registered name",
             lambda i: store.sign_in(f"Dr \u041a\u043f\u043ew\u043f {i}", "a wrong passphrase")),
            ("sign-in under a name nobody registered", lambda i: store.sign_in(f"Dr Nobody {i}", "a passphrase")),
            ("registering a free name", lambda i: store.register(f"Dr New {i}", "a new passphrase")),
            ("registering a taken name", lambda i: store.register(f"Dr Known {i}", "a new passphrase")),
            ("short passphrase, registered name", lambda i: store.sign_in(f"Dr Known {i}", "short")),
            ("short passphrase, free name", lambda i: store.sign_in(f"Dr Free {i}", "short")),
            ("blank passphrase, registered name", lambda i: store.sign_in(f"Dr Known {i}", " " * 8)),
            ("blank passphrase, free name", lambda i: store.sign_in(f"Dr Free {i}", " " * 8)),
        ]
        print(f"{'answer':<50} | {'median ms':>9} | {'p90 ms':>7}")
        print(f"{'-' * 50}-|-{'-' * 9}-|-{'-' * 7}")
        for label, answer in rows:
            median, p90 = _timed(answer, args.repeats)
            print(f"{label:<50} | {median:>9.1f} | {p90:>7.1f}", flush=True)
        median, p90 = _locked_refusal(store, args.repeats)
        print(f"{'locked name (refused without checking)':<50} | {median:>9.1f} | {p90:>7.1f}", flush=True)


def _locked_refusal(store: ReviewStore, repeats: int) -> tuple[float, float]:
    """Median and 90th percentile in milliseconds of the first refusal of each name once locked (timed alone: the
    first lockout lasts 2 s, shorter than a busy machine's table)."""
    times = []
    for index in range(repeats):
        while True:
            start = time.perf_counter()
            try:
                store.sign_in(f"Dr Known {index}", "a wrong passphrase")
            except SignInThrottled:
                times.append((time.perf_counter() - start) * 1000)
                break
            except ReviewError:
                continue
    return statistics.median(times), percentile(times, 90)


if __name__ == "__main__":
    main()

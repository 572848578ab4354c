"""Classifier forward time under each CPU policy, idle and with a second torch process busy, interleaved.

    python scripts/benchmark_threads.py --rounds 3               # the README's table
    python scripts/benchmark_threads.py --rounds 1 --batch 1 16  # quicker

Each measurement runs in a fresh process (OpenMP reads OMP_WAIT_POLICY when torch loads it) that times the
forward pass of a shipped classifier on random input (median ms per image). "busy" means another process runs
matrix products with torch's default settings on the same cores throughout, as a training run, predict.py or a
second replica would. Variants and conditions are interleaved in rounds so that other load on the machine
spreads over all of them. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (environment of the measuring process, apply the allocator settings inside it)
VARIANTS: dict[str, dict[str, str]] = {
    "torch defaults (active waiting, glibc defaults)": {"COVID_RUNTIME": "default"},
    "OMP_WAIT_POLICY=PASSIVE only": {"COVID_RUNTIME": "default", "OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread only": {"COVID_RUNTIME": "default", "OMP_NUM_THREADS": "1"},
    "malloc thresholds only": {"COVID_RUNTIME": "default", "BENCH_MALLOC": "1"},
    "covid_models.runtime (the policy)": {},
    "covid_models.runtime + 1 thread": {"COVID_TORCH_THREADS": "1"},
}
BUSY = ("import torch\n"
        "a = torch.randn(1024, 1024)\n"
        "while True:\n"
        "    a = torch.tanh(a @ a / 32)\n")


def child(model_dir: str, batch: int, seconds: float) -> None:
    """Runs in the measuring process: policy first, then torch, then timed forwards."""
    from covid_models import runtime

    runtime.configure()
    if os.environ.get("BENCH_MALLOC"):
        runtime.tune_malloc()
    import torch

    from covid_models.models.inference import Classifier

    classifier = Classifier.load(model_dir)
    size = classifier.card.preprocessing.image_size
    inputs = torch.randn(batch, classifier.card.preprocessing.channels, size, size)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            classifier.model(inputs)
        start = time.perf_counter()
        while len(times) < 3 or (len(times) < 30 and time.perf_counter() - start < seconds):
            began = time.perf_counter()
            classifier.model(inputs)
            times.append((time.perf_counter() - began) * 1000 / batch)
    print(json.dumps({"ms": statistics.median(times), "n": len(times), "threads": torch.get_num_threads()}))


def measure(variant: str, model_dir: str, batch: int, seconds: float) -> float:
    env = {**os.environ, **VARIANTS[variant]}
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "COVID_TORCH_THREADS", "BENCH_MALLOC", "COVID_RUNTIME"):
        if key not in VARIANTS[variant]:
            env.pop(key, None)
    result = subprocess.run([sys.executable, __file__, "--child", model_dir, "--batch", str(batch),
                             "--seconds", str(seconds)], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "weights" / "xray-efficientnet-lite0"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=6.0, help="timing budget per measurement")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch[0], args.seconds)
        return
    results: dict[tuple[str, int, bool], list[float]] = {}
    for round_index in range(args.rounds):
        for busy in (False, True):
            other = None
            if busy:
                other = subprocess.Popen([sys.executable, "-c", BUSY], env={k: v for k, v in os.environ.items()
                                                                            if k != "OMP_WAIT_POLICY"})
                time.sleep(3)  # torch imported and computing
            try:
                for batch in args.batch:
                    for variant in args.variants:
                        ms = measure(variant, args.model, batch, args.seconds)
                        results.setdefault((variant, batch, busy), []).append(ms)
                        print(f"round {round_index + 1} {'busy' if busy else 'idle'} batch {batch} {variant}: "
                              f"{ms:.1f} ms/image", file=sys.stderr, flush=True)
            finally:
                if other is not None:
                    other.kill()
                    other.wait()
    print(f"\n{Path(args.model).name}, forward pass, median over {args.rounds} round(s) of the per-round medians "
          f"(ms per image); load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| policy | batch | idle | second torch process busy | busy / idle |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for batch in args.batch:
        for variant in args.variants:
            idle = statistics.median(results[(variant, batch, False)])
            busy = statistics.median(results[(variant, batch, True)])
            print(f"| {variant} | {batch} | {idle:.1f} | {busy:.1f} | {busy / idle:.1f}x |")


if __name__ == "__main__":
    main()

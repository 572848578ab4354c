"""Two CT infection segmenter recipes over several seeds, paired, with the decision the protocol states.

    python scripts/compare_segmenter_recipes.py --old runs/ctseg-old-s1 --old runs/ctseg-old-s2 \
        --new runs/ctseg-new-s1 --new runs/ctseg-new-s2 --data ../shared/data [--json runs/recipes.json]

Each seed must have one run of each recipe (paired by the seed in their cards: same folds, same held-out negatives).
Prints the mean Dice per seed and recipe, the paired Dice difference averaged over seeds with its 95 % CI against the
non-inferiority margin, the held-out negatives' false-positive areas (final models, paired per slice, sign test), the
out-of-fold negatives (reported only), and the decision. The shared CT scans are not read: nothing here may look at
them (docs/ct-lesion-segmenter.md, "Second look").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from covid_models.models.checkpoint import CheckpointError
from covid_models.training.manifests import DataError
from covid_models.training.recipe_comparison import compare_seed, decide, seed_pairs, seed_spread
from covid_models.training.splits import NEGATIVE_HELD_OUT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, action="append", required=True, help="a reference-recipe run (repeat)")
    parser.add_argument("--new", type=Path, action="append", required=True, help="a candidate-recipe run (repeat)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data root")
    parser.add_argument("--negatives-held-out", type=float, default=NEGATIVE_HELD_OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the decision and its figures here")
    return parser.parse_args(argv)


def print_decision(decision: dict) -> None:
    """The decision's figures as markdown."""
    print("| seed | old: mean CV Dice | new: mean CV Dice |\n| ---: | ---: | ---: |")
    for seed, dice in decision["mean_dice_per_seed"].items():
        print(f"| {seed} | {dice['old']:.3f} | {dice['new']:.3f} |")
    spread = seed_spread(decision)
    print(f"\nSeed-to-seed spread of the mean Dice: old {spread['old']:.3f}, new {spread['new']:.3f}")
    d = decision["dice_difference"]
    print(f"\nDice new - old, per slice averaged over {len(decision['seeds'])} seeds: {d['mean']:+.4f} "
          f"(95 % CI {d['ci95_low']:+.4f} to {d['ci95_high']:+.4f}, n={d['n']}); margin {d['margin']:+.2f}: "
          f"{'passes' if d['passes'] else 'fails'}")
    for key, what in (("held_out_negatives", "Held-out negatives (final models)"),
                      ("out_of_fold_negatives", "Out-of-fold negatives (reported only)")):
        a = decision[key]
        if a is None:
            continue
        verdict = f"; {'passes' if a['passes'] else 'fails'}" if "passes" in a else ""
        print(f"{what}: {a['pairs']} slice-model pairs, mean area old {a['mean_old']:.5f}, new {a['mean_new']:.5f}; "
              f"new lower on {a['new_lower']}, higher on {a['new_higher']}, equal on {a['equal']}; "
              f"sign test p = {a['sign_test_p']:.2g}{verdict}")
    print(f"\nDecision: {'replace the shipped model' if decision['replace'] else 'keep the shipped model'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        pairs = seed_pairs(args.old, args.new)
        seeds = [compare_seed(pair, args.data / "ct-negatives", args.negatives_held_out) for pair in pairs]
    except (CheckpointError, DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    decision = decide(seeds)
    print_decision(decision)
    if args.json:
        args.json.write_text(json.dumps({**decision, "runs": [{"seed": s["seed"], "old": s["old"], "new": s["new"]}
                                                              for s in seeds]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

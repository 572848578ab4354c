"""Two segmentation training recipes compared over several seeds, paired image by image, with a decision rule.

One training run per recipe cannot tell a recipe's effect from run-to-run noise. Here each seed trains both recipes
on the same folds and holds out the same negatives, so every figure is a paired difference: cross-validated Dice per
positive slice (averaged over the seeds, then a bootstrap CI of the mean), and the false-positive area per held-out
negative slice (each seed's final models; a sign test over the slice-model pairs that differ). The margins live here,
once, so the script that prints the decision and the document that states the protocol cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd

from covid_models.metrics import summary_with_ci
from covid_models.models.checkpoint import read_card
from covid_models.models.segmentation import Segmenter
from covid_models.training.infection_false_positives import false_positive_areas
from covid_models.training.splits import NEGATIVE_HELD_OUT, load_segmentation_negatives

DICE_MARGIN = 0.02  # the new recipe may lose at most this much mean Dice (lower bound of the 95 % CI)
SIGN_TEST_ALPHA = 0.05  # the false-positive gain must be this unlikely under "no difference"


def cross_validated_dice(card_metrics: dict) -> pd.DataFrame:
    """Per-image cross-validated Dice and fold from a card (empty when the card has no cross-validation)."""
    per_image = card_metrics.get("cross_validation", {}).get("per_image")
    return pd.DataFrame(per_image)[["image", "fold", "dice"]] if per_image else pd.DataFrame(
        columns=["image", "fold", "dice"])


def paired_dice(reference: pd.DataFrame, other: pd.DataFrame) -> dict | None:
    """Mean per-image Dice difference (other - reference) on the images both scored in the same fold."""
    both = reference.merge(other, on=["image", "fold"], suffixes=("_ref", "_new"))
    if both.empty:
        return None
    return {**summary_with_ci((both["dice_new"] - both["dice_ref"]).to_numpy()),
            "better": int((both["dice_new"] > both["dice_ref"]).sum())}


def sign_test(lower: int, higher: int) -> float:
    """Two-sided exact sign test: how likely a split at least this uneven is when either side is equally likely."""
    n = lower + higher
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(lower, higher) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class SeedPair:
    """One seed's two runs: the reference recipe's model folder and the candidate's."""
    seed: int
    old: Path
    new: Path


def seed_pairs(old: list[Path], new: list[Path]) -> list[SeedPair]:
    """Pair runs by the seed their cards record; each seed must have exactly one run of each recipe."""
    def by_seed(folders: list[Path]) -> dict[int, Path]:
        seeds = {int(read_card(folder, "segmentation").training["seed"]): folder for folder in folders}
        if len(seeds) != len(folders):
            raise ValueError("two runs of one recipe share a seed")
        return seeds
    old_seeds, new_seeds = by_seed(old), by_seed(new)
    if old_seeds.keys() != new_seeds.keys():
        raise ValueError(f"the recipes were run with different seeds: {sorted(old_seeds)} and {sorted(new_seeds)}")
    return [SeedPair(seed, old_seeds[seed], new_seeds[seed]) for seed in sorted(old_seeds)]


def compare_seed(pair: SeedPair, negatives_dir: Path, held_out: float = NEGATIVE_HELD_OUT) -> dict:
    """One seed: per-image Dice of both recipes, and both final models' areas on the seed's held-out negatives.

    The out-of-fold negatives (the candidate's fold models, from its card) are set against the reference's final
    model on the same slices, which never saw a negative; reported, not decided on.
    """
    old, new = Segmenter.load(pair.old), Segmenter.load(pair.new)
    old_dice = cross_validated_dice(old.card.metrics)
    dice = old_dice.merge(cross_validated_dice(new.card.metrics), on=["image", "fold"], suffixes=("_old", "_new"),
                          validate="1:1")
    if len(dice) != len(old_dice):
        raise ValueError(f"seed {pair.seed}: the two runs did not use the same folds")
    negatives = load_segmentation_negatives(negatives_dir, held_out, pair.seed)
    test = negatives[negatives["split"] == "test"]
    areas = false_positive_areas(old, test)[["image", "area"]].merge(
        false_positive_areas(new, test)[["image", "area"]], on="image", suffixes=("_old", "_new"))
    out_of_fold = new.card.metrics.get("cross_validation", {}).get("negatives", {}).get("per_image")
    oof = None
    if out_of_fold:
        oof = pd.DataFrame(out_of_fold)[["image", "area"]].rename(columns={"area": "area_new"})
        training = negatives[negatives["split"] == "train"]
        oof = false_positive_areas(old, training)[["image", "area"]].rename(columns={"area": "area_old"}).merge(
            oof, on="image")
    return {"seed": pair.seed, "old": str(pair.old), "new": str(pair.new), "dice": dice.assign(seed=pair.seed),
            "held_out": areas.assign(seed=pair.seed),
            "out_of_fold": None if oof is None else oof.assign(seed=pair.seed)}


def area_comparison(areas: pd.DataFrame) -> dict:
    """Paired false-positive areas (columns area_old, area_new): means, how often each is lower, sign test."""
    lower = int((areas["area_new"] < areas["area_old"]).sum())
    higher = int((areas["area_new"] > areas["area_old"]).sum())
    return {"pairs": int(len(areas)), "mean_old": float(areas["area_old"].mean()),
            "mean_new": float(areas["area_new"].mean()), "new_lower": lower, "new_higher": higher,
            "equal": int(len(areas)) - lower - higher, "sign_test_p": sign_test(lower, higher)}


def decide(seeds: list[dict]) -> dict:
    """The protocol's decision over all seeds: Dice non-inferiority and a false-positive gain on held-out negatives."""
    dice = pd.concat([s["dice"] for s in seeds], ignore_index=True)
    per_image = dice.assign(difference=dice["dice_new"] - dice["dice_old"]).groupby("image")["difference"].mean()
    difference = summary_with_ci(per_image.to_numpy())
    held_out = area_comparison(pd.concat([s["held_out"] for s in seeds], ignore_index=True))
    folds = [s["out_of_fold"] for s in seeds if s["out_of_fold"] is not None]
    dice_passes = difference["ci95_low"] > -DICE_MARGIN
    areas_pass = (held_out["mean_new"] < held_out["mean_old"] and held_out["new_lower"] > held_out["new_higher"]
                  and held_out["sign_test_p"] < SIGN_TEST_ALPHA)
    return {
        "seeds": [s["seed"] for s in seeds],
        "mean_dice_per_seed": {int(seed): {"old": float(g["dice_old"].mean()), "new": float(g["dice_new"].mean())}
                               for seed, g in dice.groupby("seed")},
        "dice_difference": {**difference, "margin": -DICE_MARGIN, "passes": bool(dice_passes)},
        "held_out_negatives": {**held_out, "alpha": SIGN_TEST_ALPHA, "passes": bool(areas_pass)},
        "out_of_fold_negatives": area_comparison(pd.concat(folds, ignore_index=True)) if folds else None,
        "replace": bool(dice_passes and areas_pass),
    }


def seed_spread(decision: dict) -> dict[str, float]:
    """Largest minus smallest mean Dice over the seeds, per recipe: how much one run alone can move."""
    per_seed = decision["mean_dice_per_seed"].values()
    return {recipe: float(np.ptp([s[recipe] for s in per_seed])) for recipe in ("old", "new")}

"""Statistics of a seed study: mean and spread over seeds, and paired differences to a baseline.

Models are compared *paired by seed*: seed s of every model shares initialisation and data order,
so the per-seed difference removes most of the seed-to-seed spread. The goal criterion is the one
the project holds itself to: the mean gain in hard mIoU exceeds twice the standard error of the
paired differences, with the overall mIoU not lower on average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, TypedDict

from pydantic import BaseModel


class SeedScores(TypedDict):
    """One model's scores for one seed, in percent."""

    miou: float
    hard_miou: float
    iou: Mapping[str, float]  # class name -> IoU


class MeanStd(BaseModel):
    mean: float
    std: float  # sample standard deviation (n - 1); NaN for a single seed
    n: int


class PairedDifference(BaseModel):
    diffs: list[float]  # model - baseline, one per seed, in seed order
    mean: float
    std: float
    se: float  # std / sqrt(n); NaN for a single seed


class Comparison(BaseModel):
    miou: PairedDifference
    hard_miou: PairedDifference
    goal_met: bool


class ModelSummary(BaseModel):
    miou: MeanStd
    hard_miou: MeanStd
    iou: dict[str, MeanStd]


class StudySummary(BaseModel):
    seeds: list[int]
    models: dict[str, ModelSummary]
    paired: dict[str, Comparison]  # each compared model vs the baseline


def mean_std(xs: Sequence[float]) -> MeanStd:
    if not xs:
        raise ValueError("mean_std needs at least one value")
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return MeanStd(mean=mean, std=std, n=n)


def paired_difference(model: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    if len(model) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(model)} and {len(baseline)}")
    diffs = [m - b for m, b in zip(model, baseline, strict=True)]
    ms = mean_std(diffs)
    se = ms.std / math.sqrt(ms.n) if ms.n > 1 else float("nan")
    return PairedDifference(diffs=diffs, mean=ms.mean, std=ms.std, se=se)


def goal_met(hard: PairedDifference, overall: PairedDifference) -> bool:
    """Hard-mIoU gain beyond twice its standard error, overall mIoU not lower (needs >= 2 seeds)."""
    if len(hard.diffs) < 2:
        return False
    return hard.mean > 2.0 * hard.se and overall.mean >= 0.0


def summarise_seeds(
    per_seed: Mapping[int, Mapping[str, SeedScores]],
    baseline: str = "baseline",
    compared: Sequence[str] = (),
) -> StudySummary:
    """`per_seed[seed][model]` scores -> mean/std per model and metric, and for every model in
    `compared` its paired difference to `baseline`. Every seed must score the same models."""
    seeds = sorted(per_seed)
    if not seeds:
        raise ValueError("no seeds to summarise")
    names = list(per_seed[seeds[0]])
    for s in seeds:
        if list(per_seed[s]) != names:
            raise ValueError(f"seed {s} scores models {list(per_seed[s])}, seed {seeds[0]} {names}")

    def values(model: str, key: Literal["miou", "hard_miou"]) -> list[float]:
        return [float(per_seed[s][model][key]) for s in seeds]

    models: dict[str, ModelSummary] = {}
    for name in names:
        classes = list(per_seed[seeds[0]][name]["iou"])
        models[name] = ModelSummary(
            miou=mean_std(values(name, "miou")),
            hard_miou=mean_std(values(name, "hard_miou")),
            iou={c: mean_std([float(per_seed[s][name]["iou"][c]) for s in seeds]) for c in classes},
        )
    paired: dict[str, Comparison] = {}
    for name in compared:
        if name not in names or baseline not in names:
            raise ValueError(f"cannot pair {name!r} with {baseline!r}: models are {names}")
        overall = paired_difference(values(name, "miou"), values(baseline, "miou"))
        hard = paired_difference(values(name, "hard_miou"), values(baseline, "hard_miou"))
        paired[name] = Comparison(miou=overall, hard_miou=hard, goal_met=goal_met(hard, overall))
    return StudySummary(seeds=seeds, models=models, paired=paired)

"""Choosing a version by what the user can afford: among the registered versions whose measured
latency on a target (tagged by a study with a cost objective, facemask.training.cost) fits the
budget, the one with the best test score; the promotion gate then decides as for any version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facemask.core.errors import ConfigError
from facemask.tracking import list_versions

# A version's measured cost on a target, as a study with a cost objective tags it.
LATENCY_TAG = "latency_ms.{target}"
FRONT_TAG = "facemask.front"  # the study whose Pareto front a version is on
SCORE = "test_mAP50-95"  # what the choice ranks by: the gate's own metric


def latency_tag(target: str) -> str:
    return LATENCY_TAG.format(target=target)


@dataclass(frozen=True)
class BudgetChoice:
    """The chosen version and the line that says why, with how many versions were weighed."""

    version: str
    latency_ms: float
    score: float
    reason: str
    candidates: int


def choose_within_budget(
    versions: list[dict[str, Any]], target: str, max_latency_ms: float, where: str = "the registry"
) -> BudgetChoice:
    """The best-scoring of `versions` (list_versions' rows) within `max_latency_ms` on `target`;
    ties go to the faster. ConfigError when none is costed, or none fits (naming the cheapest)."""
    tag = latency_tag(target)
    costed = [v for v in versions if tag in v["metrics"] and SCORE in v["metrics"]]
    if not costed:
        raise ConfigError(
            f"--max-latency-ms: no version in {where} has a measured latency on {target} and a test score; "
            f"run `facemask tune --latency-target {target}` to register a front"
        )
    fits = [v for v in costed if v["metrics"][tag] <= max_latency_ms]
    if not fits:
        cheapest = min(costed, key=lambda v: v["metrics"][tag])
        raise ConfigError(
            f"--max-latency-ms {max_latency_ms:g}: no version in {where} runs within it on {target}; the cheapest is "
            f"version {cheapest['version']} at {cheapest['metrics'][tag]:.1f} ms "
            f"({SCORE} {cheapest['metrics'][SCORE]:.4f}): raise the budget to at least that"
        )
    best = max(fits, key=lambda v: (v["metrics"][SCORE], -v["metrics"][tag]))
    ms, score = best["metrics"][tag], best["metrics"][SCORE]
    reason = (
        f"version {best['version']}: {ms:.1f} ms a frame on {target} (budget {max_latency_ms:g}), {SCORE} {score:.4f}, "
        f"the best of {len(fits)} within budget ({len(costed)} costed)"
    )
    return BudgetChoice(best["version"], ms, score, reason, len(costed))


def choose_version(
    name: str, target: str, max_latency_ms: float, tracking_uri: str, study: str | None = None
) -> BudgetChoice:
    """`choose_within_budget` over `name`'s registered versions, or only one study's front."""
    versions = list_versions(name, tracking_uri, with_tags=study is not None)
    where = f"{name}"
    if study is not None:
        versions = [v for v in versions if v.get("tags", {}).get(FRONT_TAG) == study]
        where = f"{name}, study {study}'s front"
    return choose_within_budget(versions, target, max_latency_ms, where)

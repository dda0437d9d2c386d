"""Which settings mattered: each searched hyperparameter's share of the variance of a study's
objective, by fANOVA (Optuna's `FanovaImportanceEvaluator`, a random forest fitted to the
trials, then the variance each parameter explains on its own).

Every trial with a score counts at its best value, a trial stopped early by ASHA included: that
it was stopped is what its settings did. Below `MIN_TRIALS` scored trials a forest over so few
points ranks noise, so nothing is shown and the study says how many more it needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from facemask.training.space import to_optuna_space

EVALUATOR = "fANOVA"
MIN_TRIALS = 10
SEED = 0  # the forest's: the same trials always give the same table


@dataclass
class Importance:
    """The table (parameter -> share of variance, summing to 1, largest first), or why there is none."""

    evaluator: str
    trials: int
    shares: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def shown(self) -> bool:
        return bool(self.shares)

    def line(self) -> str:
        if not self.shown:
            return f"which settings mattered: not shown, {self.reason}"
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(self.shares.items())[:5])
        return f"which settings mattered ({self.evaluator}, {self.trials} trials): {top}"

    def as_dict(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator, "trials": self.trials, "shares": self.shares, "reason": self.reason}


def widened(dist, values: list) -> Any:
    """`dist` stretched to every value the trials had: a baseline point may sit outside the space."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        extra = [v for v in values if v not in dist.choices]
        return CategoricalDistribution(list(dist.choices) + list(dict.fromkeys(extra))) if extra else dist
    low, high = min([dist.low, *values]), max([dist.high, *values])
    if dist.log and low <= 0:  # a log scale cannot hold 0: fall back to a linear one
        return type(dist)(low, high)
    return type(dist)(low, high, log=dist.log)


def param_importance(rows: list[dict[str, Any]], space: dict[str, dict], mode: str) -> Importance:
    """fANOVA over the study's scored trials (rows as `summarise` builds them: config, objective)."""
    scored = [r for r in rows if r["objective"] == r["objective"]]  # NaN: the trial never scored
    if len(scored) < MIN_TRIALS:
        need = MIN_TRIALS - len(scored)
        return Importance(EVALUATOR, len(scored), reason=f"{len(scored)} scored trials, {need} more needed")
    observed = {name: [r["config"][name] for r in scored if name in r["config"]] for name in space}
    varied = {
        name: widened(dist, observed[name])
        for name, dist in to_optuna_space(space).items()
        if len(set(map(str, observed[name]))) > 1
    }
    if not varied:
        return Importance(EVALUATOR, len(scored), reason="every trial had the same settings")
    import optuna

    quiet = logging.getLogger("optuna")  # "A new study created in memory" is not the study's news
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        quiet.setLevel(level)
    for row in scored:
        params = {name: row["config"][name] for name in varied if name in row["config"]}
        dists = {name: varied[name] for name in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row["objective"])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=SEED)
    shares = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return Importance(EVALUATOR, len(scored), {name: float(share) for name, share in shares.items()})

"""The search space of a study: a YAML of distributions over Ultralytics train arguments,
checked, and turned into Ray Tune's (and Optuna's, to read the trials back); `baseline`
points are tried first."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from facemask.core.errors import ConfigError

log = logging.getLogger("facemask.training.tune")


DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


# Ultralytics train arguments that make sense to search; anything else is a typo or not a hyperparameter.
TUNABLE = (
    "lr0",
    "lrf",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_momentum",
    "warmup_bias_lr",
    "optimizer",
    "box",
    "cls",
    "dfl",
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "shear",
    "perspective",
    "flipud",
    "fliplr",
    "bgr",
    "mosaic",
    "mixup",
    "cutmix",
    "copy_paste",
    "close_mosaic",
    "erasing",
    "cos_lr",
    "nbs",
    "dropout",
    "cls_pw",
    # Not an Ultralytics argument: each trial trains on its own repeat-factor list (facemask.data.sampling).
    "repeat_threshold",
    # What a version costs to run: the architecture (a model source such as yolo26n.yaml) and the
    # training and operating size. With a cost objective both must be choices (costs_to_measure).
    "model",
    "imgsz",
)
# Searched settings that size the model rather than steer its training.
SHAPE = ("model", "imgsz")


def shape_of(config: dict[str, Any], model: str, imgsz: int) -> dict[str, Any]:
    """The model and size a trial's `config` asks for, taken out of it (they are TrainConfig fields,
    not Ultralytics overrides), or the study's own `model` and `imgsz`."""
    defaults = {"model": model, "imgsz": imgsz}
    shape = {key: config.pop(key, defaults[key]) for key in SHAPE}
    return {"model": str(shape["model"]), "imgsz": int(shape["imgsz"])}


def load_search_space(path: Path | None = None) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """Read and validate a search-space YAML: (space, points to evaluate first).

    `baseline` is one point or a list of points. Unknown keys name the valid ones.
    """
    text = (
        Path(path).read_text()
        if path
        else resources.files("facemask.training").joinpath("configs/search_space.yaml").read_text()
    )
    where = str(path or "the packaged search_space.yaml")
    doc = yaml.safe_load(text) or {}
    space, baseline = doc.get("space") or {}, doc.get("baseline") or []
    points = [baseline] if isinstance(baseline, dict) else list(baseline)
    if not space:
        raise ConfigError(f"{where}: no `space:` mapping of parameter -> distribution")
    for key in list(space) + [k for point in points for k in point]:
        if key not in TUNABLE:
            raise ConfigError(f"{where}: unknown hyperparameter {key!r}; valid: {', '.join(TUNABLE)}")
    for key, spec in space.items():
        kind = (spec or {}).get("type")
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: {key}: type must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
        if kind == "choice" and not spec.get("values"):
            raise ConfigError(f"{where}: {key}: a choice needs `values: [...]`")
        if kind != "choice" and not (
            isinstance(spec.get("low"), (int, float))
            and isinstance(spec.get("high"), (int, float))
            and spec["low"] < spec["high"]
        ):
            raise ConfigError(f"{where}: {key}: needs numeric low < high")
    for point in points:
        missing = set(point) - set(space)
        if missing:
            raise ConfigError(f"{where}: baseline sets {sorted(missing)} which are not in `space`")
    return space, points


def to_tune_space(space: dict[str, dict]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "choice":
            out[key] = tune.choice(list(spec["values"]))
        elif kind == "randint":
            out[key] = tune.randint(int(spec["low"]), int(spec["high"]))
        else:
            out[key] = getattr(tune, kind)(float(spec["low"]), float(spec["high"]))
    return out


def to_optuna_space(space: dict[str, dict]) -> dict[str, Any]:
    """The same space as Optuna distributions (for reading a finished study's trials)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "choice":
            out[name] = CategoricalDistribution(list(spec["values"]))
        elif kind == "randint":  # tune.randint's high is exclusive
            out[name] = IntDistribution(int(spec["low"]), int(spec["high"]) - 1)
        else:
            out[name] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=kind == "loguniform")
    return out


def costs_to_measure(space: dict[str, dict], baseline: list[dict], model: str, imgsz: int) -> list[tuple[str, int]]:
    """Every (model, size) a trial of this space can train: the choices of `model` and `imgsz`
    (the study's own when not searched) and the baseline points'. A cost is measured per pair
    before the first trial, so a searched `model` or `imgsz` must be a choice."""
    values = {}
    for key, default in (("model", model), ("imgsz", imgsz)):
        spec = space.get(key)
        if spec is None:
            values[key] = [default]
        elif spec["type"] != "choice":
            raise ConfigError(
                f"search space: {key}: with a cost objective it must be a choice "
                f"(e.g. {{type: choice, values: [...]}}): its cost is measured once per value before the first trial"
            )
        else:
            values[key] = list(spec["values"])
    pairs = [(str(m), int(i)) for m in values["model"] for i in values["imgsz"]]
    pairs += [(str(p.get("model", model)), int(p.get("imgsz", imgsz))) for p in baseline]
    return list(dict.fromkeys(pairs))

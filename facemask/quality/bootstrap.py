"""Average precision with 95% bootstrap intervals, from stored per-image predictions.

A score on 68 test images is a sample, not a fact. Here each image's predictions are kept
as they were matched to its ground truth (a true/false positive at each of the ten IoU
thresholds 0.50:0.95, with confidence and class), so AP can be recomputed on any
resample of the images without running the model again: resample the images with
replacement (seeded), recompute, and take the 2.5th and 97.5th percentiles. Two models
scored on the same images are compared with a *paired* bootstrap: the same resample for
both, so the interval is that of their difference.

AP here is the area under the precision envelope (all-point interpolation, as in VOC and
COCO's definition before its 101-point sampling): a perfect detector scores exactly 1.
Ultralytics' own figure samples 101 recall points and tops out at 0.995, so the two differ
by up to a few thousandths; every interval and point estimate printed beside one another
comes from this one function.

A leaf: numpy only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
DEFAULT_RESAMPLES = 1000
_CHUNK = 100  # resamples scored at once: bounds memory at chunk x predictions x 10


@dataclass
class ImagePredictions:
    """All predictions of one model on a set of images, matched to their ground truth.

    `tp` (n_pred x 10, bool), `conf` and `pred_cls` (n_pred) and `pred_img` (n_pred, the
    image each came from); `target_cls` and `target_img` (n_targets). Images are numbered
    0..n_images-1 in `names`' order.
    """

    names: list[str]
    tp: np.ndarray
    conf: np.ndarray
    pred_cls: np.ndarray
    pred_img: np.ndarray
    target_cls: np.ndarray
    target_img: np.ndarray

    @classmethod
    def from_images(cls, images: Sequence[dict[str, Any]]) -> "ImagePredictions":
        """From one dict per image: name, tp, conf, pred_cls, target_cls (Ultralytics' per-image stats)."""
        tp = [np.asarray(i["tp"], bool).reshape(-1, len(IOU_THRESHOLDS)) for i in images]
        return cls(
            names=[str(i["name"]) for i in images],
            tp=np.concatenate(tp) if tp else np.zeros((0, len(IOU_THRESHOLDS)), bool),
            conf=np.concatenate([np.asarray(i["conf"], float).ravel() for i in images]) if images else np.zeros(0),
            pred_cls=np.concatenate([np.asarray(i["pred_cls"], int).ravel() for i in images])
            if images
            else np.zeros(0, int),
            pred_img=np.concatenate([np.full(len(t), n) for n, t in enumerate(tp)]) if images else np.zeros(0, int),
            target_cls=np.concatenate([np.asarray(i["target_cls"], int).ravel() for i in images])
            if images
            else np.zeros(0, int),
            target_img=np.concatenate([np.full(np.asarray(i["target_cls"]).size, n) for n, i in enumerate(images)])
            if images
            else np.zeros(0, int),
        )

    @property
    def n_images(self) -> int:
        return len(self.names)

    def save(self, path) -> None:
        arrays = {name: getattr(self, name) for name in _ARRAY_TYPES}
        np.savez_compressed(path, names=np.asarray(self.names), **arrays)

    @classmethod
    def load(cls, path) -> "ImagePredictions":
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name].astype(kind) for name, kind in _ARRAY_TYPES.items()}
            return cls(names=[str(n) for n in z["names"]], **arrays)


# The arrays of ImagePredictions and their element types (a saved file keeps them as written).
_ARRAY_TYPES = {"tp": bool, "conf": float, "pred_cls": int, "pred_img": int, "target_cls": int, "target_img": int}


def _weighted_ap(tp: np.ndarray, weights: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    """AP for each resample and IoU threshold: tp (P x T) sorted by confidence, weights (B x P)
    (how often each prediction's image was drawn), n_targets (B). Returns B x T."""
    if tp.shape[0] == 0:  # no prediction of the class: 0 where it has objects, undefined where none were drawn
        return np.where(n_targets[:, None] > 0, 0.0, np.nan) * np.ones((1, tp.shape[1]))
    w = weights[:, :, None]
    ctp = np.cumsum(w * tp[None], axis=1)
    cfp = np.cumsum(w * (~tp)[None], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = ctp / n_targets[:, None, None]
        precision = np.where(ctp + cfp > 0, ctp / (ctp + cfp), 0.0)
    # The envelope: at each rank, the best precision at that recall or beyond.
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    steps = np.diff(recall, axis=1, prepend=0.0)
    ap = np.sum(steps * envelope, axis=1)
    return np.where(n_targets[:, None] > 0, ap, np.nan)


def _class_ap(p: ImagePredictions, c: int, counts: np.ndarray) -> np.ndarray:
    """AP of class `c` (B x 10) under image counts (B x n_images)."""
    mine = np.flatnonzero(p.pred_cls == c)
    order = mine[np.argsort(-p.conf[mine], kind="stable")]
    n_targets = counts[:, p.target_img[p.target_cls == c]].sum(axis=1).astype(float)
    return _weighted_ap(p.tp[order], counts[:, p.pred_img[order]].astype(float), n_targets)


def _scores(p: ImagePredictions, classes: Sequence[int], counts: np.ndarray) -> dict[str, np.ndarray]:
    """{"mAP50", "mAP50-95"} overall and per class index, each an array over resamples (B)."""
    out: dict[str, np.ndarray] = {}
    per_class = []
    for c in classes:
        ap = np.empty((counts.shape[0], len(IOU_THRESHOLDS)))
        for start in range(0, counts.shape[0], _CHUNK):
            ap[start : start + _CHUNK] = _class_ap(p, c, counts[start : start + _CHUNK])
        out[f"{c}/mAP50"], out[f"{c}/mAP50-95"] = ap[:, 0], ap.mean(axis=1)
        per_class.append(ap)
    stacked = np.stack(per_class)  # C x B x T; a class absent from a resample does not count in its mean
    with warnings.catch_warnings():  # "mean of empty slice": a resample that drew no object of any class
        warnings.simplefilter("ignore", RuntimeWarning)
        out["mAP50"] = np.nanmean(stacked[:, :, 0], axis=0)
        out["mAP50-95"] = np.nanmean(stacked.mean(axis=2), axis=0)
    return out


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """How often each image is drawn in each resample (resamples x n_images), seeded."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.int32)


@dataclass
class Interval:
    value: float
    low: float
    high: float
    # Resamples with no value (they drew no object of the class): left out of the percentiles, counted here.
    left_out: int = 0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclass
class BootstrapResult:
    """Point estimates with their intervals, overall and per class, and the object counts behind them."""

    overall: dict[str, Interval]
    per_class: dict[str, dict[str, Interval]]
    objects: dict[str, int]
    images: int
    resamples: int
    confidence: float
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def row(m: dict[str, Interval]) -> dict[str, list[float]]:
            return {k: [v.value, v.low, v.high] for k, v in m.items()}

        return {
            "overall": row(self.overall),
            "per_class": {k: row(v) for k, v in self.per_class.items()},
            "left_out": self.left_out(),
            "objects": self.objects,
            "images": self.images,
            "resamples": self.resamples,
            "confidence": self.confidence,
            "seed": self.seed,
        }

    def left_out(self) -> dict[str, int]:
        """Resamples left out of each interval (a class none of whose objects they drew), where any were."""
        scopes = [("all", self.overall)] + list(self.per_class.items())
        return {f"{scope}/{name}": i.left_out for scope, values in scopes for name, i in values.items() if i.left_out}

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat MLflow metrics: `{prefix}/mAP50`, `{prefix}/mAP50_low`, ..., per class `/{name}`."""
        out = {}
        for scope, values in [("", self.overall)] + [(f"/{k}", v) for k, v in self.per_class.items()]:
            for name, i in values.items():
                out.update(
                    {
                        f"{prefix}/{name}{scope}": i.value,
                        f"{prefix}/{name}_low{scope}": i.low,
                        f"{prefix}/{name}_high{scope}": i.high,
                    }
                )
        for name, count in self.objects.items():
            out[f"{prefix}/objects/{name}"] = count
        return out

    def table(self, title: str = "") -> str:
        pct = round(self.confidence * 100)
        lines = ([title] if title else []) + [
            f"{'class':24s} {'objects':>7s}  {'AP50 [' + str(pct) + '% interval]':>24s}  "
            f"{'AP50-95 [' + str(pct) + '% interval]':>24s}"
        ]
        rows = [("all", self.overall, sum(self.objects.values()))]
        rows += [(k, v, self.objects.get(k, 0)) for k, v in self.per_class.items()]
        for name, m, n in rows:
            lines.append(f"{name:24s} {n:7d}  {str(m['mAP50']):>24s}  {str(m['mAP50-95']):>24s}")
        lines.append(f"({self.images} images, {self.resamples} bootstrap resamples of the images, seed {self.seed})")
        for scope, count in self.left_out().items():
            if scope.endswith("/mAP50"):
                lines.append(
                    f"({scope.split('/')[0]}: {count} resamples drew none of its objects: left out of its intervals)"
                )
        return "\n".join(lines)


def _interval(point: float, samples: np.ndarray, confidence: float) -> Interval:
    undefined = np.isnan(samples)
    samples, left_out = samples[~undefined], int(undefined.sum())
    if samples.size == 0:
        return Interval(float(point), float("nan"), float("nan"), left_out)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high), left_out)


def _result(
    point: dict[str, float],
    draws: dict[str, np.ndarray],
    reference: ImagePredictions,
    classes: list[int],
    class_names: Sequence[str],
    resamples: int,
    seed: int,
    confidence: float,
    **extra: Any,
) -> BootstrapResult:
    """Point estimates and the percentile intervals of their draws, overall and per class."""

    def pick(prefix: str) -> dict[str, Interval]:
        return {m: _interval(point[prefix + m], draws[prefix + m], confidence) for m in ("mAP50", "mAP50-95")}

    return BootstrapResult(
        overall=pick(""),
        per_class={class_names[c]: pick(f"{c}/") for c in classes},
        objects={class_names[c]: int(np.sum(reference.target_cls == c)) for c in classes},
        images=reference.n_images,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
        extra=extra,
    )


def bootstrap(
    p: ImagePredictions,
    class_names: Sequence[str],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """AP50 and AP50-95, overall and per class present in the ground truth, with percentile intervals."""
    classes = [c for c in range(len(class_names)) if np.any(p.target_cls == c)]
    point = {k: v[0] for k, v in _scores(p, classes, np.ones((1, p.n_images), np.int32)).items()}
    draws = _scores(p, classes, resample_counts(p.n_images, resamples, seed))
    return _result(point, draws, p, classes, class_names, resamples, seed, confidence)


def paired_bootstrap(
    candidate: ImagePredictions | Sequence[ImagePredictions],
    baseline: ImagePredictions | Sequence[ImagePredictions],
    class_names: Sequence[str],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Candidate minus baseline, on the same images drawn the same way: the interval of the difference.

    Lists pair runs of several training seeds (candidate i with baseline i): the difference is
    averaged over the pairs within each resample, so the interval covers the images' noise
    and the seeds' together. Raises ValueError when the runs were not scored on the same images.
    """
    candidates = [candidate] if isinstance(candidate, ImagePredictions) else list(candidate)
    baselines = [baseline] if isinstance(baseline, ImagePredictions) else list(baseline)
    if len(candidates) != len(baselines) or not candidates:
        raise ValueError(
            f"{len(candidates)} candidate runs against {len(baselines)} baseline runs: pair them one to one"
        )
    reference = baselines[0]
    for run in candidates + baselines:
        if run.names != reference.names or not np.array_equal(run.target_cls, reference.target_cls):
            raise ValueError("the runs were not scored on the same images and labels; evaluate all on the same data")
    classes = [c for c in range(len(class_names)) if np.any(reference.target_cls == c)]
    ones = np.ones((1, reference.n_images), np.int32)
    counts = resample_counts(reference.n_images, resamples, seed)
    point: dict[str, float] = {}
    draws: dict[str, np.ndarray] = {}
    for a, b in zip(candidates, baselines):
        pa, pb = _scores(a, classes, ones), _scores(b, classes, ones)
        da, db = _scores(a, classes, counts), _scores(b, classes, counts)
        for key in pa:
            point[key] = point.get(key, 0.0) + (pa[key][0] - pb[key][0]) / len(candidates)
            draws[key] = draws.get(key, 0.0) + (da[key] - db[key]) / len(candidates)
    return _result(point, draws, reference, classes, class_names, resamples, seed, confidence, pairs=len(candidates))


def ratio_interval(
    numerator: np.ndarray,
    denominator: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """sum(numerator) / sum(denominator) over the images, with its interval over resamples of the images.

    One value of each per image: true positives over detections is precision, over faces is
    recall; an absolute count error over ones is the mean absolute error. The same `seed`
    draws the same resamples, so the difference of two models' per-image values gives a
    paired interval.
    """
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    point = numerator.sum() / denominator.sum() if denominator.sum() else float("nan")
    counts = resample_counts(len(numerator), resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = (counts @ numerator) / (counts @ denominator)
    return _interval(point, draws, confidence)

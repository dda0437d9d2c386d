"""The project's scoring against the reference (issue 48): constructed detections on 50 images, 3
classes (one rare), duplicate boxes on one face and NMS at 0.7, scored by `scoring.match` with
`bootstrap` and by Ultralytics 8.4's `match_predictions` with `ap_per_class`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from facemask.core.classes import CLASS_NAMES
from facemask.detection.fusion import Boxes, box_iou
from facemask.quality.bootstrap import ImagePredictions, bootstrap
from facemask.quality.scoring import match

torch = pytest.importorskip("torch")


def nms(boxes: Boxes, iou: float = 0.7) -> Boxes:
    """Per-class greedy NMS, as the validator applies (a duplicate under `iou` overlap survives)."""
    keep = []
    for c in np.unique(boxes.cls):
        mine = np.flatnonzero(boxes.cls == c)
        mine = mine[np.argsort(-boxes.conf[mine], kind="stable")]
        while len(mine):
            keep.append(mine[0])
            mine = mine[1:][box_iou(boxes.xyxy[mine[0]], boxes.xyxy[mine[1:]]) <= iou]
    return boxes.keep(np.sort(np.asarray(keep, int)))


def constructed(seed: int = 0, images: int = 50) -> list[tuple[Boxes, Boxes]]:
    """(truth, detections) per image: faces of three classes (the third rare); each found with
    jitter, some twice (a confident loose box and a less confident tight one), some missed,
    some found as the wrong class, plus false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        n = rng.integers(1, 6)
        cls = rng.choice(3, size=n, p=[0.7, 0.25, 0.05])
        xy = rng.uniform(0, 560, (n, 2))
        size = rng.uniform(30, 90, (n, 1))
        truth = Boxes(np.hstack([xy, xy + size]), np.ones(n), cls)
        boxes, confs, classes = [], [], []
        for box, c, s in zip(truth.xyxy, cls, size[:, 0]):
            if rng.random() < 0.15:
                continue  # missed
            shown = c if rng.random() > 0.1 else rng.integers(0, 3)
            jitter = rng.normal(0, 0.12 * s, 4)
            boxes.append(box + jitter)
            confs.append(rng.uniform(0.3, 0.95))
            classes.append(shown)
            if rng.random() < 0.35:  # a duplicate: the confident box is the looser one
                tight = box + rng.normal(0, 0.03 * s, 4)
                loose = box + np.array([-1, -1, 1, 1]) * 0.1 * s  # IoU 0.69 with the face and the tight box
                boxes[-1], confs[-1] = loose, rng.uniform(0.7, 0.95)
                boxes.append(tight)
                confs.append(confs[-1] * rng.uniform(0.5, 0.95))
                classes.append(shown)
        for _ in range(rng.integers(0, 4)):  # false positives
            corner = rng.uniform(0, 560, 2)
            boxes.append(np.concatenate([corner, corner + rng.uniform(20, 80, 2)]))
            confs.append(rng.uniform(0.01, 0.6))
            classes.append(rng.integers(0, 3))
        found = Boxes(np.asarray(boxes).reshape(-1, 4), np.asarray(confs), np.asarray(classes, int))
        out.append((truth, nms(found)))
    return out


def reference_map50(images: list[tuple[Boxes, Boxes]]) -> tuple[float, np.ndarray]:
    """Ultralytics 8.4: match_predictions (in confidence order) and ap_per_class; (mAP50, AP50 per class)."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class
    from ultralytics.utils.metrics import box_iou as torch_iou

    validator = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, pred_cls, target_cls = [], [], [], []
    for truth, found in images:
        order = np.argsort(-found.conf, kind="stable")  # the validator's predictions come sorted
        found = found.keep(order)
        if len(found) and len(truth):
            iou = torch_iou(
                torch.tensor(truth.xyxy, dtype=torch.float32), torch.tensor(found.xyxy, dtype=torch.float32)
            )
            tp = BaseValidator.match_predictions(
                validator, torch.tensor(found.cls), torch.tensor(truth.cls), iou
            ).numpy()
        else:
            tp = np.zeros((len(found), 10), bool)
        tps.append(tp)
        confs.append(found.conf)
        pred_cls.append(found.cls)
        target_cls.append(truth.cls)
    result = ap_per_class(
        np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_cls), np.concatenate(target_cls)
    )
    ap = result[5]
    return float(ap[:, 0].mean()), ap[:, 0]


def ours_map50(images: list[tuple[Boxes, Boxes]]) -> tuple[float, np.ndarray]:
    per_image = [
        {"name": str(i), "tp": match(found, truth), "conf": found.conf, "pred_cls": found.cls, "target_cls": truth.cls}
        for i, (truth, found) in enumerate(images)
    ]
    result = bootstrap(ImagePredictions.from_images(per_image), CLASS_NAMES, resamples=200, seed=0)
    per_class = np.array([result.per_class[name]["mAP50"].value for name in CLASS_NAMES])
    return result.overall["mAP50"].value, per_class


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map50_agrees_with_ultralytics_on_constructed_detections(seed):
    images = constructed(seed)
    assert sum(int(np.sum(t.cls == 2)) for t, _ in images) >= 2  # the rare class is there
    ours, ours_per_class = ours_map50(images)
    theirs, theirs_per_class = reference_map50(images)
    assert abs(ours - theirs) <= 0.005, (ours, theirs)
    assert np.all(np.abs(ours_per_class - theirs_per_class) <= 0.01), (ours_per_class, theirs_per_class)


def test_a_confident_box_takes_the_face_before_a_tighter_less_confident_one():
    # One face; a box at 0.9 confidence with IoU 0.625, another at 0.5 with IoU 0.9.
    truth = Boxes(np.array([[0.0, 0.0, 100.0, 100.0]]), np.ones(1), np.zeros(1, int))
    found = Boxes(np.array([[0.0, 0.0, 100.0, 160.0], [0.0, 0.0, 100.0, 90.0]]), np.array([0.9, 0.5]), np.zeros(2, int))
    tp = match(found, truth)
    assert tp[0, 0] and not tp[1, 0], tp[:, 0]  # at IoU 0.5: the confident box is the true positive


def test_a_class_absent_from_a_resample_is_left_out_not_scored_zero():
    # The rare class has one object and no prediction: a resample without that image has no AP for it.
    per_image = [
        {"name": "a", "tp": np.ones((1, 10), bool), "conf": [0.9], "pred_cls": [0], "target_cls": [0, 2]},
        *[
            {"name": f"b{i}", "tp": np.ones((1, 10), bool), "conf": [0.8], "pred_cls": [0], "target_cls": [0]}
            for i in range(9)
        ],
    ]
    result = bootstrap(ImagePredictions.from_images(per_image), CLASS_NAMES, resamples=400, seed=1)
    rare = result.per_class["mask_weared_incorrect"]["mAP50"]
    assert rare.value == 0.0 and rare.left_out > 50, rare  # about a third of the resamples lack image a
    # The overall mean is over the classes each resample holds: without image a, mAP50 is 1.
    assert result.overall["mAP50"].high == 1.0
    assert "left out" in result.table()

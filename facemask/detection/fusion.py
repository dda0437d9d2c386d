"""Weighted-box fusion: several models' detections of one image merged into one set.

Non-maximum suppression keeps the single most confident box of a cluster and drops the
others; fusion averages them instead, weighting each box's corners by its confidence, so
models that place a face slightly differently agree on a better box. A fused box's
confidence is its members' mean confidence scaled by how many of the models found it
(min(members, models) / models), so a face only one model of three saw keeps a third of
its score (Solovyev et al., "Weighted boxes fusion", 2021; their `conf_type="avg"`).

A leaf: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_IOU = 0.55


@dataclass
class Boxes:
    """Detections of one image: xyxy (N x 4, any units shared by all models), conf (N), cls (N)."""

    xyxy: np.ndarray
    conf: np.ndarray
    cls: np.ndarray

    @classmethod
    def empty(cls) -> "Boxes":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))

    def __len__(self) -> int:
        return len(self.conf)

    def keep(self, mask: np.ndarray) -> "Boxes":
        return Boxes(self.xyxy[mask], self.conf[mask], self.cls[mask])


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of `others`."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_boxes_fusion(
    per_model: Sequence[Boxes],
    weights: Sequence[float] | None = None,
    iou_thr: float = DEFAULT_IOU,
    skip_below: float = 0.0,
) -> Boxes:
    """Fuse each model's detections of one image (one `Boxes` per model), class by class.

    Boxes are taken in order of weighted confidence; each joins the fused box of its class it
    overlaps most if that IoU exceeds `iou_thr`, else starts a new one. Boxes under
    `skip_below` are ignored. `weights` (one per model, default equal) scale each model's
    confidences.
    """
    weights = np.ones(len(per_model)) if weights is None else np.asarray(weights, float)
    if len(weights) != len(per_model):
        raise ValueError(f"{len(weights)} weights for {len(per_model)} models")
    rows = [
        (float(c) * w, int(k), xyxy)
        for boxes, w in zip(per_model, weights)
        for xyxy, c, k in zip(boxes.xyxy, boxes.conf, boxes.cls)
        if c >= skip_below
    ]
    rows.sort(key=lambda r: -r[0])
    fused: list[tuple[int, list[float], list[np.ndarray]]] = []  # class, member scores, member boxes
    centres: dict[int, list[np.ndarray]] = {}  # class -> the fused boxes so far, in `fused` order
    where: dict[int, list[int]] = {}
    for score, k, xyxy in rows:
        mine = centres.setdefault(k, [])
        if mine:
            ious = box_iou(np.asarray(xyxy, float), np.asarray(mine))
            best = int(np.argmax(ious))
            if ious[best] > iou_thr:
                index = where[k][best]
                fused[index][1].append(score)
                fused[index][2].append(np.asarray(xyxy, float))
                s = np.asarray(fused[index][1])
                mine[best] = (s[:, None] * np.asarray(fused[index][2])).sum(0) / s.sum()
                continue
        where.setdefault(k, []).append(len(fused))
        mine.append(np.asarray(xyxy, float))
        fused.append((k, [score], [np.asarray(xyxy, float)]))
    if not fused:
        return Boxes.empty()
    out_xyxy, out_conf, out_cls = [], [], []
    for k, scores, boxes in fused:
        s = np.asarray(scores)
        out_xyxy.append((s[:, None] * np.asarray(boxes)).sum(0) / s.sum())
        out_conf.append(s.mean() * min(len(s), len(weights)) / weights.sum())
        out_cls.append(k)
    order = np.argsort(-np.asarray(out_conf), kind="stable")
    return Boxes(np.asarray(out_xyxy)[order], np.asarray(out_conf)[order], np.asarray(out_cls, int)[order])

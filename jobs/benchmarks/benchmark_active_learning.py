"""Benchmark: at equal labels, do the production sampler's picks make a better model than chance?

From a prepared dataset (`facemask data prepare`; its val and test splits stay fixed), the
training split is cut, per seed, into a labelled seed set and an unlabelled pool whose labels
are hidden. Each round, for each arm:
1. the arm's current model (trained on its labelled set) looks at every pool image;
2. it picks k of them: (a) **the sampler**, the production code (`facemask.learning.sampler`,
   `Sampler.reasons` at the model's threshold with the watch's band and rare class): images
   with a reason first (a rare class, then a face near the threshold), in random order within
   each, then chance for the rest; (b) **chance** alone;
3. their labels are revealed (the labeller), and the arm trains again from scratch on its
   labelled set, both arms for the same epochs on the same number of images: equal steps.

Every model is scored on the fixed test split; the arms are compared paired, image by image and
over the seeds (`facemask.quality.bootstrap.paired_bootstrap`): test mAP50, mAP50-95 and the
incorrectly worn mask's AP50, each with its 95% interval.

    python jobs/benchmarks/benchmark_active_learning.py --data data/real/data.yaml --seed-images 120 --k 60 \
        --rounds 3 --epochs 15 --seeds 0,1

It trains 2 arms x rounds x seeds models (12 above; about 2 hours on 2 CPU cores at 320), so run
it on a quiet machine or a GPU (`--device 0`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark_quality import fmt, train_and_score  # noqa: E402

from facemask.core.classes import CLASS_NAMES  # noqa: E402

ARMS = ("sampler", "chance")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared data.yaml: its train split is the pool")
    parser.add_argument("--seed-images", type=int, default=120, help="labelled images before the first round")
    parser.add_argument("--k", type=int, default=60, help="images labelled per round and arm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="every training, from scratch (equal steps per round)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--model", default="yolo26n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--conf", type=float, default=0.25, help="the threshold the sampler's band centres on")
    parser.add_argument("--band", type=float, default=0.1)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--experiment", default="benchmark-active-learning")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.test_data = args.data
    return args


def training_images(data: Path) -> list[Path]:
    """The originals of the prepared train split (pasted copies are the augmentation's, not labels)."""
    doc = yaml.safe_load(data.read_text())
    train = Path(doc["path"]) / doc["train"]
    paths = [Path(p) for p in train.read_text().split()] if train.is_file() else sorted(train.iterdir())
    return sorted(p for p in paths if not p.name.startswith("synthetic_"))


def round_data(data: Path, images: list[Path], where: Path) -> Path:
    """A data.yaml training on `images` (a list file), with the prepared val and test splits."""
    doc = yaml.safe_load(data.read_text())
    where.mkdir(parents=True, exist_ok=True)
    listing = where / "train.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    made = where / "data.yaml"
    made.write_text(yaml.safe_dump({**doc, "train": str(listing)}))
    return made


def sampler_picks(weights: str, pool: list[Path], k: int, args, rng: random.Random) -> list[Path]:
    """The production sampler's choice of k pool images: a reason first (rare, then uncertain)."""
    from facemask.detection.detector import load_detector
    from facemask.learning.sampler import Sampler, SamplingRule

    sampler = Sampler(SamplingRule(faces="keep", band=args.band, random_share=0.0), {}, default=args.conf)
    detector = load_detector(weights, device="cpu")
    ranked: dict[int, list[Path]] = {0: [], 1: [], 2: []}
    for start in range(0, len(pool), 16):
        chunk = pool[start : start + 16]
        found = detector.predict(chunk, conf=max(0.001, args.conf - args.band), imgsz=args.imgsz)
        for path, detections in zip(chunk, found):
            reasons = sampler.reasons([{"label": d.label, "confidence": d.confidence} for d in detections])
            ranked[0 if "rare" in reasons else 1 if reasons else 2].append(path)
    picks: list[Path] = []
    for level in (0, 1, 2):
        rng.shuffle(ranked[level])
        picks += ranked[level][: k - len(picks)]
    return picks


def run_seed(seed: int, args, out: Path, parent: str) -> list[dict]:
    rng = random.Random(seed)
    images = training_images(args.data)
    rng.shuffle(images)
    seeded, pool = images[: args.seed_images], images[args.seed_images :]
    state = {arm: {"labelled": list(seeded), "pool": list(pool), "weights": None} for arm in ARMS}
    rows = []
    for round_ in range(args.rounds + 1):  # round 0: the seed set alone, the same for both arms
        for arm in ARMS if round_ else ARMS[:1]:
            one = state[arm]
            if round_:
                if arm == "sampler":
                    picks = sampler_picks(one["weights"], one["pool"], args.k, args, rng)
                else:
                    picks = rng.sample(one["pool"], min(args.k, len(one["pool"])))
                one["labelled"] += picks  # the labeller: their labels are the prepared ones
                one["pool"] = [p for p in one["pool"] if p not in set(picks)]
            data = round_data(args.data, one["labelled"], out / f"seed{seed}" / f"{arm}-round{round_}")
            row = train_and_score(f"{arm}-r{round_}", data, seed, args, out, parent, args.epochs)
            row |= {"arm": arm, "round": round_, "labelled": len(one["labelled"])}
            rows.append(row)
            one["weights"] = str(out / "runs" / f"{arm}-r{round_}-seed{seed}" / "weights" / "best.pt")
            if not round_:
                state["chance"]["weights"] = one["weights"]
            shown = {k: row[k] for k in ("arm", "round", "labelled", "seed")} | {"test": row["test"]["overall"]}
            print(json.dumps(shown), flush=True)
    return rows


def report(rows: list[dict], args) -> str:
    from facemask.quality.bootstrap import ImagePredictions, paired_bootstrap

    lines = [
        f"{len(args.seeds)} seeds; {args.seed_images} labelled, then {args.k} a round per arm; {args.epochs} epochs "
        f"of {args.model} at {args.imgsz} per training; paired on the fixed test split",
        "| round | labelled | sampler mAP50 | chance mAP50 | Δ mAP50 [95% CI] | Δ mAP50-95 | Δ incorrect AP50 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for round_ in range(1, args.rounds + 1):
        by_arm = {arm: [r for r in rows if r["arm"] == arm and r["round"] == round_] for arm in ARMS}
        a = [ImagePredictions.load(r["predictions"]) for r in sorted(by_arm["sampler"], key=lambda r: r["seed"])]
        b = [ImagePredictions.load(r["predictions"]) for r in sorted(by_arm["chance"], key=lambda r: r["seed"])]
        d = paired_bootstrap(a, b, CLASS_NAMES, resamples=args.resamples)
        mean = {arm: sum(r["test"]["overall"]["mAP50"][0] for r in by_arm[arm]) / len(by_arm[arm]) for arm in ARMS}
        rare = d.per_class.get("mask_weared_incorrect", {}).get("mAP50")
        lines.append(
            f"| {round_} | {by_arm['sampler'][0]['labelled']} | {mean['sampler']:.3f} | {mean['chance']:.3f} | "
            f"{d.overall['mAP50'].signed()} | {d.overall['mAP50-95'].signed()} | {rare.signed() if rare else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    from facemask.core.runtime import configure_runtime
    from facemask.tracking import RunLogger

    args = parse(argv)
    configure_runtime()
    out = args.out or Path(tempfile.mkdtemp(prefix="facemask-active-learning-"))
    out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    parent = RunLogger(args.experiment, f"active-learning-{time.strftime('%Y%m%d-%H%M%S')}",
                       tracking_uri=args.tracking_uri, system_metrics=False)  # fmt: skip
    rows = [row for seed in args.seeds for row in run_seed(seed, args, out, parent.run_id)]
    table = report(rows, args)
    (out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "table.md").write_text(table)
    parent.log_dict({"table": table}, "table.json")
    parent.end("FINISHED")
    print(table)
    print(f"first seed's round-0 mAP50: {fmt(rows[0]['test']['overall']['mAP50'])}; rows in {out / 'rows.json'}")
    return table


if __name__ == "__main__":
    main()

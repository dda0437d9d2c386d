"""Benchmark: does each part of the rare-class recipe help? An ablation on the real set, at equal cost.

Every variant trains yolo26n from scratch for the same number of optimizer steps as the
baseline (originals only), with each of `--seeds`, as MLflow runs under one parent run;
the image-size variant gets the baseline's wall-clock instead (Ultralytics' `time=`), since
a larger image costs more per step. Every run is scored on the same held-out test images,
and each variant is compared with the baseline by a paired bootstrap of the stored
per-image predictions (the same resamples for both, averaged over the seed pairs), so the
printed difference carries its own 95% interval. A variant whose interval straddles 0 shows
no effect at this budget, and the table says so.

Variants (`--variants`, comma-separated):
    originals   the prepared originals, no pasting (the baseline)
    copy_paste  plus copy-paste of the rare classes (`data prepare --balance`), train split only
    repeat      plus repeat-factor sampling (`data prepare --repeat-threshold`)
    cls_pw      plus Ultralytics' inverse-frequency class weights in the loss (`cls_pw=`)
    imgsz       a larger image (`--large-imgsz`) at the baseline's wall-clock
    tuned       the best trial of a small `facemask tune` study on the same data, trained as long as the baseline

    python jobs/benchmarks/benchmark_quality.py [--source data/kaggle] \
        [--epochs 10] [--seeds 0,1]

The test split is 25% of the images here (the product's default is 10%): 68 test images
hold 9 incorrectly worn masks, too few to tell one recipe from another.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from facemask.core.classes import CLASS_NAMES  # noqa: E402
from facemask.core.runtime import configure_runtime  # noqa: E402
from facemask.quality.bootstrap import BootstrapResult, ImagePredictions, paired_bootstrap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT / "data" / "kaggle"  # what `facemask data fetch --out data/kaggle` downloads
ALL_VARIANTS = ("originals", "copy_paste", "repeat", "cls_pw", "imgsz", "tuned")
RARE = ("without_mask", "mask_weared_incorrect")


def steps_per_epoch(data_yaml: Path, batch: int) -> int:
    """Optimizer steps in one epoch: the training images listed (repeats included) over the batch."""
    doc = yaml.safe_load(data_yaml.read_text())
    train = Path(doc["train"]) if Path(doc["train"]).is_absolute() else Path(doc["path"]) / doc["train"]
    images = len(train.read_text().splitlines()) if train.is_file() else sum(1 for _ in train.iterdir())
    return math.ceil(images / batch)


def prepare_data(source: Path, out: Path, split: tuple, seed: int, balance: float) -> dict[str, Path]:
    from facemask.core.settings import AugmentConfig, PrepareConfig
    from facemask.data.pipeline import prepare

    made = {}
    for name, ratio in (("originals", 0.0), ("copy_paste", balance)):
        cfg = PrepareConfig(
            source=source,
            out=out / name,
            engine="local",
            seed=seed,
            split=split,
            plots=False,
            augment=AugmentConfig(balance_ratio=ratio),
        )
        made[name] = prepare(cfg).data_yaml
    return made


def run_study(data: Path, args, out: Path, parent: str) -> dict:
    """The best hyperparameters of a small study (Optuna TPE + ASHA) on the same training data."""
    from facemask.core.runtime import init_ray
    from facemask.core.settings import StudyConfig
    from facemask.training.tune import tune

    init_ray()
    # The trainings' model and sizes; the study's own length, its grace period, and one CPU a trial.
    same = {"model": args.model, "imgsz": args.imgsz, "batch": args.batch, "experiment": args.experiment, "seed": 0}
    study = {"trials": args.study_trials, "epochs": args.study_epochs, "grace_period": args.study_grace}
    where = {"storage": str(out / "study"), "name": "quality-study", "tracking_uri": args.tracking_uri}
    cfg = StudyConfig(data=data, cpus_per_trial=1, register=False, **same, **study, **where)
    result = tune(cfg)
    print(
        f"study: {args.study_trials} trials x {args.study_epochs} epochs in {result.seconds / 60:.1f} min; "
        f"best trial {result.best_trial}: {result.best_val}",
        flush=True,
    )
    return dict(result.best_config)


def train_and_score(
    name: str,
    data: Path,
    seed: int,
    args,
    out: Path,
    parent: str,
    epochs: int,
    overrides: dict | None = None,
    imgsz: int | None = None,
) -> dict:
    """One training and its test-split score (with the per-image predictions kept)."""
    from facemask.core.settings import TrainConfig
    from facemask.quality.evaluate import evaluate
    from facemask.tracking import RunLogger
    from facemask.training.train import train

    imgsz = imgsz or args.imgsz
    started = time.perf_counter()
    result = train(
        TrainConfig(
            data=data,
            model=args.model,
            epochs=epochs,
            imgsz=imgsz,
            batch=args.batch,
            device="cpu",
            workers=args.workers,
            project=out / "runs",
            run_name=f"{name}-seed{seed}",
            seed=seed,
            plots=False,
            experiment=args.experiment,
            parent_run_id=parent,
            overrides=dict(overrides or {}),
            tags={"facemask.variant": name},
            tracking_uri=args.tracking_uri,
        )
    )
    seconds = time.perf_counter() - started
    scored = evaluate(
        str(result.best), args.test_data, imgsz=imgsz, device="cpu", log_results=False, resamples=args.resamples
    )
    preds = out / "predictions" / f"{name}-seed{seed}.npz"
    preds.parent.mkdir(parents=True, exist_ok=True)
    scored.predictions.save(preds)
    logger = RunLogger(run_id=result.run_id, tracking_uri=args.tracking_uri, system_metrics=False)
    logger.log_metrics(scored.intervals.metrics("test_bootstrap") | {"benchmark/train_seconds": seconds})
    logger.log_artifact(preds, "evaluation/test")
    return {
        "variant": name,
        "seed": seed,
        "epochs": result.epochs_run,
        "steps": result.epochs_run * steps_per_epoch(data, args.batch),
        "train_seconds": seconds,
        "imgsz": imgsz,
        "run_id": result.run_id,
        "predictions": str(preds),
        "test": scored.intervals.to_dict(),
    }


def fmt(values: list[float]) -> str:
    return f"{values[0]:.3f} [{values[1]:.3f}, {values[2]:.3f}]"


def report(rows: list[dict], differences: dict[str, BootstrapResult], baseline: str) -> str:
    lines = [
        f"{'variant':11s} {'seed':>4s} {'steps':>6s} {'min':>5s}  {'mAP50 [95% CI]':>21s}  {'mAP50-95 [95% CI]':>21s}  "
        f"{'without_mask AP50':>21s}  {'incorrect AP50':>21s}"
    ]
    for r in rows:
        t = r["test"]
        per = t["per_class"]
        lines.append(
            f"{r['variant']:11s} {r['seed']:4d} {r['steps']:6d} {r['train_seconds'] / 60:5.1f}  "
            f"{fmt(t['overall']['mAP50']):>21s}  {fmt(t['overall']['mAP50-95']):>21s}  "
            f"{fmt(per['without_mask']['mAP50']):>21s}  {fmt(per['mask_weared_incorrect']['mAP50']):>21s}"
        )
    objects = rows[0]["test"]["objects"]
    lines.append(
        f"test split: {rows[0]['test']['images']} images, objects " + ", ".join(f"{k}={v}" for k, v in objects.items())
    )
    lines.append("")
    lines.append(f"paired differences against {baseline} (mean over seeds; 95% interval over images and seeds):")
    lines.append(
        f"{'variant':11s}  {'Δ mAP50':>24s}  {'Δ mAP50-95':>24s}  {'Δ without_mask AP50':>24s}  "
        f"{'Δ incorrect AP50':>24s}  verdict"
    )
    for name, d in differences.items():
        gain = d.overall["mAP50"]
        verdict = "helps" if gain.low > 0 else "hurts" if gain.high < 0 else "no effect shown"
        lines.append(
            f"{name:11s}  {d.overall['mAP50'].signed():>24s}  {d.overall['mAP50-95'].signed():>24s}  "
            f"{d.per_class['without_mask']['mAP50'].signed():>24s}  "
            f"{d.per_class['mask_weared_incorrect']['mAP50'].signed():>24s}  {verdict}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--model", default="yolo26n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--large-imgsz", type=int, default=416)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8, help="The baseline's epochs; the others match its steps.")
    parser.add_argument("--workers", type=int, default=2, help="Dataloader workers.")
    parser.add_argument("--split", default="0.65,0.1,0.25")
    parser.add_argument(
        "--balance", type=float, default=0.5, help="copy_paste: each rare class to this share of the majority."
    )
    parser.add_argument("--repeat-threshold", type=float, default=0.3)
    parser.add_argument("--cls-pw", type=float, default=0.5)
    parser.add_argument("--study-trials", type=int, default=6)
    parser.add_argument("--study-epochs", type=int, default=6)
    # From scratch the first epochs' scores are all near 0: ASHA must not rank trials on them.
    parser.add_argument("--study-grace", type=int, default=3, help="ASHA's grace period (epochs).")
    parser.add_argument(
        "--tuned-config",
        type=Path,
        default=None,
        help="tuned: a YAML of hyperparameters (a study's best) instead of running the study.",
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--experiment", default="benchmark-quality")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(ALL_VARIANTS)
    if unknown or "originals" not in variants:
        parser.error(
            f"--variants: 'originals' (the baseline) plus any of {', '.join(ALL_VARIANTS)}; unknown: {sorted(unknown)}"
        )
    if not (args.source / "annotations").is_dir():
        parser.error(f"--source {args.source}: no annotations/ folder (the Kaggle VOC layout)")
    seeds = [int(s) for s in args.seeds.split(",")]
    configure_runtime()
    out = args.out or Path(tempfile.mkdtemp(prefix="facemask-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve() / 'mlflow.db'}"

    from facemask.data.sampling import data_with_repeats
    from facemask.tracking import RunLogger

    started = time.perf_counter()
    datasets = prepare_data(args.source, out / "data", tuple(float(x) for x in args.split.split(",")), 0, args.balance)
    args.test_data = datasets["originals"]  # every variant is scored on these test images
    if "repeat" in variants:
        datasets["repeat"], _ = data_with_repeats(
            datasets["originals"], args.repeat_threshold, 0, out / "data" / "repeat", CLASS_NAMES
        )
    parent = RunLogger(
        args.experiment,
        f"ablation-{time.strftime('%Y%m%d-%H%M%S')}",
        tracking_uri=args.tracking_uri,
        system_metrics=False,
    )
    parent.log_params({k: str(v) for k, v in vars(args).items()})
    baseline_steps = args.epochs * steps_per_epoch(datasets["originals"], args.batch)
    tuned_config = {}
    if "tuned" in variants:
        tuned_config = (
            yaml.safe_load(args.tuned_config.read_text())
            if args.tuned_config
            else run_study(datasets["originals"], args, out, parent.run_id)
        )
        (out / "tuned_config.yaml").write_text(yaml.safe_dump(tuned_config))
    rows: list[dict] = []
    baseline_seconds: dict[int, float] = {}
    for seed in seeds:
        for name in variants:
            data = datasets.get(name, datasets["originals"])
            epochs = max(1, round(baseline_steps / steps_per_epoch(data, args.batch)))
            overrides, imgsz = {}, None
            if name == "cls_pw":
                overrides = {"cls_pw": args.cls_pw}
            elif name == "tuned":
                overrides = tuned_config
            elif name == "imgsz":
                # Equal wall-clock: Ultralytics sizes the epochs to fit `time` (hours) after its first one.
                imgsz, epochs = args.large_imgsz, 1000
                overrides = {"time": baseline_seconds[seed] / 3600}
            row = train_and_score(name, data, seed, args, out, parent.run_id, epochs, overrides, imgsz)
            if name == "originals":
                baseline_seconds[seed] = row["train_seconds"]
            rows.append(row)
            print(
                f"{name} seed {seed}: {row['epochs']} epochs, {row['steps']} steps, "
                f"{row['train_seconds'] / 60:.1f} min; "
                f"test mAP50 {fmt(row['test']['overall']['mAP50'])}",
                flush=True,
            )
    load = {(r["variant"], r["seed"]): ImagePredictions.load(r["predictions"]) for r in rows}
    differences = {
        name: paired_bootstrap(
            [load[(name, s)] for s in seeds],
            [load[("originals", s)] for s in seeds],
            CLASS_NAMES,
            resamples=args.resamples,
        )
        for name in variants
        if name != "originals"
    }
    table = report(rows, differences, "originals")
    print(
        f"\nyolo26n from scratch on CPU, batch {args.batch}, baseline {args.epochs} epochs = {baseline_steps} steps at "
        f"{args.imgsz}; seeds {args.seeds}; total {(time.perf_counter() - started) / 60:.0f} min\n{table}"
    )
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "tuned_config": tuned_config,
        "differences": {k: v.to_dict() for k, v in differences.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    parent.log_dict(results, "results.json")
    parent.log_dict({"table": table}, "table.json")
    parent.end("FINISHED")
    print(f"\nresults: {out / 'results.json'}  MLflow: {args.tracking_uri} (experiment {args.experiment!r})")


if __name__ == "__main__":
    main()

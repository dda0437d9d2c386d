"""Benchmark: does `facemask tune` give a better detector than the tuners a user already has, at equal cost?

The same training images, the same validation split for choosing, the same wall-clock budget
(`--budget-min`) for each search, one after another on this machine:

    a   `facemask tune`: Optuna TPE under ASHA, as many one-CPU trials at once as the cores
        allow, on the from-scratch space (facemask/training/configs/scratch_search_space.yaml), warm
        started from the best known configuration, ASHA's grace period and reduction factor
        set for training from scratch (`--grace`, `--reduction`)
    b   Ultralytics' `model.tune()`: its genetic mutation search over its default space, one
        training after another, as many iterations as fit in the budget
    c   Ultralytics' `model.tune(use_ray=True)`: its Ray Tune search (Optuna, ASHA with its
        default grace period), as many trials as fit
    d   no search: Ultralytics' defaults

A search is stopped when its budget is spent (SIGINT, which each handles); what it had
finished counts. Then each search's best configuration is trained from scratch for the same
number of epochs (`--retrain-epochs`, equal optimizer steps) with each of `--seeds`, and
scored on the test split; paired bootstrap differences against d and against b.

Test-time levers, each against the same model without it, on the test split (paired):
test-time augmentation, a larger scoring size, and the weighted-box fusion of the study's top
3 trial models against the best of them alone. Then the operating point chosen on val
(size, per-class thresholds) against today's defaults (640, 0.25): precision, recall and the
error of per-image people counts per class.

Everything is logged to MLflow under one parent run (the study's runs and each Ultralytics
iteration as children of it).

    python jobs/benchmarks/benchmark_tuners.py [--source data/kaggle] \
        [--budget-min 15] [--retrain-epochs 6] [--seeds 0,1]
    python jobs/benchmarks/benchmark_tuners.py --synth 60 --budget-min 0.5 ...   # generated data, a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from benchmark_quality import fmt, train_and_score  # noqa: E402

from facemask.core.classes import CLASS_NAMES  # noqa: E402
from facemask.core.runtime import configure_runtime  # noqa: E402
from facemask.quality.bootstrap import ImagePredictions, paired_bootstrap  # noqa: E402

ROOT = HERE.parents[1]
DEFAULT_SOURCE = ROOT / "data" / "kaggle"  # what `facemask data fetch --out data/kaggle` downloads
SEARCHES = ("a", "b", "c", "d")
NAMES = {
    "a": "facemask tune",
    "b": "model.tune()",
    "c": "model.tune(use_ray=True)",
    "d": "defaults, no search",
}
SHORT = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "incorrect"}
SCRATCH_SPACE = ROOT / "facemask" / "training" / "configs" / "scratch_search_space.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--synth", type=int, default=0, help="Generated images instead of --source (a smoke run).")
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--budget-min", type=float, default=15.0, help="Wall-clock budget of each search.")
    parser.add_argument("--search-epochs", type=int, default=6, help="Epochs of one trial or iteration at most.")
    parser.add_argument("--grace", type=int, default=2, help="a: ASHA's grace period (epochs).")
    parser.add_argument("--reduction", type=float, default=3, help="a: ASHA's reduction factor.")
    parser.add_argument("--space", type=Path, default=SCRATCH_SPACE, help="a: the search space (and warm start).")
    parser.add_argument("--retrain-epochs", type=int, default=6)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--model", default="yolo26n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--large-imgsz", type=int, default=416, help="The larger scoring size (a lever).")
    parser.add_argument("--serve-imgsz", type=int, default=640, help="Today's default inference size.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="Dataloader workers.")
    parser.add_argument("--split", default="0.65,0.1,0.25")
    parser.add_argument("--balance", type=float, default=0.5, help="Copy-paste: each rare class to this share.")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--experiment", default="benchmark-tuners")
    parser.add_argument(
        "--searches-json",
        type=Path,
        default=None,
        help="The searches.json an earlier run of the same --out wrote: retrain and score only.",
    )
    parser.add_argument(
        "--retrain", default=None, help="Which searches' best configurations to retrain (default: all)."
    )
    args = parser.parse_args()
    args.searches = [s for s in args.searches.split(",") if s]
    if set(args.searches) - set(SEARCHES) or "d" not in args.searches:
        parser.error(f"--searches: d (the baseline) plus any of {','.join(SEARCHES)}")
    if not args.synth and not (args.source / "annotations").is_dir():
        parser.error(f"--source {args.source}: no annotations/ folder (the Kaggle VOC layout); or pass --synth N")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def search_facemask(data: Path, args, out: Path, parent: str) -> dict:
    """a: a `facemask tune` study inside the budget; its best configuration and top trials' weights."""
    from facemask.core.runtime import init_ray
    from facemask.core.settings import StudyConfig
    from facemask.tracking import client
    from facemask.training.space import load_search_space
    from facemask.training.tune import tune

    init_ray()
    cfg = StudyConfig(
        data=data,
        model=args.model,
        imgsz=args.imgsz,
        batch=args.batch,
        trials=1000,
        epochs=args.search_epochs,
        time_budget_s=args.budget_min * 60,
        search_space=args.space,
        grace_period=args.grace,
        reduction_factor=args.reduction,
        cpus_per_trial=1,
        register=False,
        storage=str(out / "study"),
        name="tuners-study",
        experiment=args.experiment,
        seed=0,
        tracking_uri=args.tracking_uri,
    )
    result = tune(cfg)
    client(args.tracking_uri).set_tag(result.parent_run_id, "mlflow.parentRunId", parent)
    ranked = sorted((t for t in result.trials if t["objective"] == t["objective"]), key=lambda t: -t["objective"])
    top = []
    for trial in ranked[:3]:
        found = sorted(Path(f"{result.storage_path}-yolo", trial["trial_id"]).rglob("best.pt"))
        top += found[:1]
    _, baseline = load_search_space(args.space)
    return {
        "config": dict(result.best_config),
        "best_val": result.best_val.get("mAP50-95", float("nan")),
        "started": len(result.trials),
        "finished": result.counts.get("finished", 0),
        "stopped_early": result.counts.get("stopped_early", 0),
        "trial_epochs": result.trial_epochs,
        "seconds": result.seconds,
        "warm_start_won": bool(baseline) and result.best_config == baseline[0],
        "top_weights": [str(p) for p in top],
    }


def ultralytics_search(mode: str, settings: dict, report: str) -> None:
    """b or c in a process of its own (the benchmark stops it with SIGINT when its budget is spent)."""
    os.chdir(Path(report).parent)  # Ultralytics' Ray path writes an mlflow.db into the working folder
    configure_runtime()
    from ultralytics import YOLO

    model = YOLO(settings.pop("model"))
    out: dict = {"mode": mode, "error": None, "trials": []}
    started = time.perf_counter()
    try:
        if mode == "b":
            model.tune(iterations=1000, val=False, **settings)
        else:
            grid = model.tune(use_ray=True, iterations=1000, **settings)
            for r in grid:
                metrics = r.metrics or {}
                out["trials"].append(
                    {
                        "config": {k: v for k, v in (r.config or {}).items() if k != "data"},
                        "fitness": float(metrics.get("metrics/mAP50-95(B)", float("nan"))),
                        "epochs": int(metrics.get("epoch", 0)),
                        "error": str(r.error) if r.error else None,
                    }
                )
    except KeyboardInterrupt:
        out["interrupted"] = True
    except Exception as exc:  # reported in the table: (c) may not run at all
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["seconds"] = time.perf_counter() - started
    Path(report).write_text(json.dumps(out, default=str))


def evolve_rows(folder: Path) -> list[dict]:
    """b's finished iterations from Ultralytics' tune_results.ndjson."""
    rows = []
    for path in folder.rglob("tune_results.ndjson"):
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            rows.append(
                {
                    "config": doc.get("hyperparameters") or doc.get("hyp") or {},
                    "fitness": float(doc.get("fitness", float("nan"))),
                    "epochs": None,
                }
            )
    return rows


def search_ultralytics(mode: str, data: Path, args, out: Path, parent: str) -> dict:
    """b or c inside the budget, stopped with SIGINT when it is spent; its best configuration."""
    folder = out / f"ultralytics-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.json"
    settings = {
        "model": args.model,
        "data": str(data),
        "epochs": args.search_epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "device": "cpu",
        "workers": args.workers,
        "plots": False,
        "project": str(folder),
        "seed": 0,
    }
    process = multiprocessing.get_context("spawn").Process(
        target=ultralytics_search, args=(mode, settings, str(report))
    )
    started = time.perf_counter()
    process.start()
    process.join(args.budget_min * 60)
    if process.is_alive():
        os.kill(process.pid, signal.SIGINT)
        process.join(120)
    if process.is_alive():  # it did not stop on SIGINT: what it finished is on disk
        process.kill()
        process.join()
    seconds = time.perf_counter() - started
    done = json.loads(report.read_text()) if report.is_file() else {"error": f"exit {process.exitcode}", "trials": []}
    rows = done["trials"] if mode == "c" else evolve_rows(folder)
    scored = [r for r in rows if r["fitness"] == r["fitness"] and not r.get("error")]
    best = max(scored, key=lambda r: r["fitness"]) if scored else None
    log_iterations(rows, mode, parent, args)
    started_count = len(rows) + (1 if mode == "b" and done.get("interrupted") else 0)
    return {
        # model.tune() trains with AdamW unless its space has an optimizer: the retrain does too.
        "config": ({"optimizer": "AdamW"} | best["config"]) if best else None,
        "best_val": best["fitness"] if best else float("nan"),
        "started": started_count,
        "finished": len(scored),
        "seconds": seconds,
        "error": done.get("error"),
    }


def log_iterations(rows: list[dict], mode: str, parent: str, args) -> None:
    """Each Ultralytics iteration or trial as a child run of the benchmark's parent run."""
    from facemask.tracking import RunLogger

    for i, row in enumerate(rows):
        run = RunLogger(
            args.experiment,
            f"{mode}-{i + 1}",
            {"facemask.search": NAMES[mode]},
            parent,
            tracking_uri=args.tracking_uri,
            system_metrics=False,
        )
        run.log_params({k: str(v) for k, v in row["config"].items()})
        if row["fitness"] == row["fitness"]:
            run.log_metrics({"val/mAP50-95": row["fitness"]})
        run.end("FINISHED")


def timed_scores(detect, images) -> tuple[ImagePredictions, float, list]:
    """Matched predictions of a `Detect` on `images`, its milliseconds per image, and its raw boxes."""
    from facemask.quality.scoring import detect_split, image_predictions

    started = time.perf_counter()
    found = detect_split(detect, images)
    ms = (time.perf_counter() - started) * 1000 / max(1, len(images))
    return image_predictions(images, found), ms, found


def test_time_levers(model: str, top_weights: list[str], args) -> dict:
    """Each lever against the same model without it, on the test split, paired; with its cost."""
    from facemask.detection.detector import load_detector
    from facemask.quality.scoring import detector_boxes, fused, split_images

    test = split_images(args.test_data, "test")
    detector = load_detector(model, device="cpu")
    base, base_ms, _ = timed_scores(detector_boxes(detector, args.imgsz), test)
    levers = {
        "test-time augmentation": (detector_boxes(detector, args.imgsz, augment=True), base, base_ms),
        f"scored at {args.large_imgsz}": (detector_boxes(detector, args.large_imgsz), base, base_ms),
    }
    if len(top_weights) >= 2:
        members = [load_detector(w, device="cpu") for w in top_weights]
        single, single_ms, _ = timed_scores(detector_boxes(members[0], args.imgsz), test)
        ensemble = fused([detector_boxes(m, args.imgsz) for m in members])
        levers[f"WBF of the study's top {len(members)} (vs its best)"] = (ensemble, single, single_ms)
    rows = {}
    for name, (detect, without, without_ms) in levers.items():
        with_it, ms, _ = timed_scores(detect, test)
        difference = paired_bootstrap(with_it, without, CLASS_NAMES, resamples=args.resamples)
        rows[name] = {"ms": ms, "without_ms": without_ms, "difference": difference}
        print(f"lever {name}: Δ mAP50 {difference.overall['mAP50'].signed()}, {ms:.0f} vs {without_ms:.0f} ms/image")
    return rows


def operating_point(model: str, args) -> dict:
    """The point chosen on val against today's defaults, on the test split."""
    from facemask.core.settings import INFERENCE
    from facemask.detection.detector import load_detector
    from facemask.quality.calibrate import choose_operating_point
    from facemask.quality.scoring import (
        at_thresholds,
        count_errors,
        detect_split,
        detector_boxes,
        point_scores,
        split_images,
    )

    val, test = split_images(args.test_data, "val"), split_images(args.test_data, "test")
    detector = load_detector(model, device="cpu")
    sizes = sorted({args.imgsz, args.large_imgsz, args.serve_imgsz})
    point, read = choose_operating_point(lambda size: detector_boxes(detector, size), val, sizes)
    serving = {"iou": INFERENCE.iou, "max_det": INFERENCE.max_det}
    found = detect_split(detector_boxes(detector, point.imgsz, conf=point.lowest, **serving), test)
    chosen = at_thresholds(found, point.thresholds())
    today = detect_split(detector_boxes(detector, args.serve_imgsz, conf=INFERENCE.conf, **serving), test)
    from facemask.quality.bootstrap import ratio_interval

    ones = [1.0] * len(test)
    new_errors, old_errors = count_errors(test, chosen), count_errors(test, today)
    return {
        "point": point,
        "val_mAP50_by_size": read,
        "chosen": point_scores(test, chosen, args.resamples),
        "today": point_scores(test, today, args.resamples),
        "mae_difference": {
            name: ratio_interval(new_errors[name] - old_errors[name], ones, args.resamples) for name in new_errors
        },
        "images": len(test),
    }


def retrain_all(configs: dict[str, dict], data: Path, args, out: Path, parent: str) -> list[dict]:
    """Each search's best configuration trained from scratch for the same epochs, each seed, at its own
    `imgsz` when it searched one (else --imgsz); test scores."""
    rows = []
    for seed in args.seeds:
        for name, config in configs.items():
            config = dict(config)
            size = int(config.pop("imgsz", args.imgsz))
            # Each finished retrain is kept, so a rerun of the same --out scores without training again.
            saved = out / "rows" / f"{name}-seed{seed}.json"
            if saved.is_file():
                row = json.loads(saved.read_text())
            else:
                row = train_and_score(name, data, seed, args, out, parent, args.retrain_epochs, config, imgsz=size)
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(row, default=str))
            row["imgsz"] = size
            rows.append(row)
            print(
                f"retrain {name} at {size}, seed {seed}: test mAP50 {fmt(row['test']['overall']['mAP50'])}", flush=True
            )
    return rows


def verdict(interval) -> str:
    return "better" if interval.low > 0 else "worse" if interval.high < 0 else "no difference shown"


def search_table(searches: dict[str, dict], budget_min: float) -> list[str]:
    lines = [f"{'search':28s} {'budget':>6s} {'used':>6s} {'started':>7s} {'finished':>8s} {'best val mAP50-95':>17s}"]
    for key, s in searches.items():
        if key == "d":
            lines.append(f"{'d ' + NAMES['d']:28s} {'0':>6s} {'0':>6s} {'-':>7s} {'-':>8s} {'-':>17s}")
            continue
        lines.append(
            f"{key + ' ' + NAMES[key]:28s} {budget_min:6.1f} {s['seconds'] / 60:6.1f} {s['started']:7d} "
            f"{s['finished']:8d} {s['best_val']:17.4f}" + (f"  ({s['error']})" if s.get("error") else "")
        )
    return lines


def retrain_table(rows: list[dict]) -> list[str]:
    lines = [
        f"{'search':6s} {'seed':>4s} {'epochs':>6s}  {'mAP50':>21s}  {'mAP50-95':>21s}  "
        + "  ".join(f"{SHORT[n] + ' AP50':>21s}" for n in CLASS_NAMES)
    ]
    for r in rows:
        t = r["test"]
        per = "  ".join(f"{fmt(t['per_class'][n]['mAP50']):>21s}" for n in CLASS_NAMES)
        lines.append(
            f"{r['variant']:6s} {r['seed']:4d} {r['epochs']:6d}  {fmt(t['overall']['mAP50']):>21s}  "
            f"{fmt(t['overall']['mAP50-95']):>21s}  {per}"
        )
    objects = rows[0]["test"]["objects"]
    lines.append(
        f"test split: {rows[0]['test']['images']} images; " + ", ".join(f"{k} {v}" for k, v in objects.items())
    )
    return lines


def difference_lines(differences: dict[str, object]) -> list[str]:
    lines = [
        f"{'pair':6s}  {'Δ mAP50':>24s}  {'Δ mAP50-95':>24s}  "
        + "  ".join(f"{'Δ ' + SHORT[n] + ' AP50':>24s}" for n in CLASS_NAMES)
        + "  verdict"
    ]
    for pair, d in differences.items():
        per = "  ".join(
            f"{d.per_class[n]['mAP50'].signed():>24s}" if n in d.per_class else f"{'-':>24s}" for n in CLASS_NAMES
        )
        lines.append(
            f"{pair:6s}  {d.overall['mAP50'].signed():>24s}  {d.overall['mAP50-95'].signed():>24s}  {per}  "
            f"{verdict(d.overall['mAP50'])}"
        )
    return lines


def lever_lines(levers: dict[str, dict]) -> list[str]:
    lines = [f"{'lever':40s}  {'Δ mAP50':>24s}  {'Δ mAP50-95':>24s}  {'ms/image':>8s}  {'without':>7s}  keep"]
    for name, row in levers.items():
        d = row["difference"]
        keep = "yes" if d.overall["mAP50"].low > 0 else "no"
        lines.append(
            f"{name:40s}  {d.overall['mAP50'].signed():>24s}  {d.overall['mAP50-95'].signed():>24s}  "
            f"{row['ms']:8.0f}  {row['without_ms']:7.0f}  {keep}"
        )
    return lines


def point_lines(op: dict, args) -> list[str]:
    point = op["point"]
    read = ", ".join(f"{size}: {value:.3f}" for size, value in op["val_mAP50_by_size"].items())
    lines = [
        f"operating point chosen on val: imgsz {point.imgsz} (val mAP50 by size: {read}); thresholds "
        + ", ".join(f"{k} {v:.3f}" for k, v in point.conf.items()),
        f"{'class':22s}  {'P, chosen':>21s}  {'R, chosen':>21s}  {'count MAE, chosen':>21s}  "
        f"{'count MAE, 0.25@' + str(args.serve_imgsz):>21s}  {'Δ MAE (paired)':>24s}",
    ]
    for name in list(CLASS_NAMES) + ["all"]:
        c, t = op["chosen"][name], op["today"][name]
        lines.append(
            f"{name:22s}  {str(c['precision']):>21s}  {str(c['recall']):>21s}  {str(c['count_mae']):>21s}  "
            f"{str(t['count_mae']):>21s}  {op['mae_difference'][name].signed():>24s}"
        )
    lines.append(
        f"({op['images']} test images; today's defaults: P {op['today']['all']['precision']}, "
        f"R {op['today']['all']['recall']})"
    )
    return lines


def compare_all(rows: list[dict], keys: list[str], args) -> dict:
    """Paired differences over the seeds: each search against d, and a against b and c."""
    load = {(r["variant"], r["seed"]): ImagePredictions.load(r["predictions"]) for r in rows}
    pairs = [(k, "d") for k in keys if k != "d"] + [("a", k) for k in ("b", "c") if "a" in keys and k in keys]
    return {
        f"{x}-{y}": paired_bootstrap(
            [load[(x, s)] for s in args.seeds],
            [load[(y, s)] for s in args.seeds],
            CLASS_NAMES,
            resamples=args.resamples,
        )
        for x, y in pairs
    }


def prepare_data(args, out: Path) -> Path:
    """The benchmark's dataset: the real photos (or generated ones), split, copy-paste on train only."""
    from facemask.core.settings import AugmentConfig, PrepareConfig
    from facemask.data.pipeline import prepare
    from facemask.data.synth import synthesize

    source = args.source
    if args.synth:
        source = out / "synth"
        synthesize(source, images=args.synth, seed=1)
    cfg = PrepareConfig(
        source=source,
        out=out / "data",
        engine="local",
        seed=0,
        split=tuple(float(x) for x in args.split.split(",")),
        plots=False,
        augment=AugmentConfig(balance_ratio=args.balance),
    )
    return prepare(cfg).data_yaml


def report(searches: dict, rows: list[dict], differences: dict, levers: dict, op: dict | None, args) -> str:
    parts = [
        f"yolo26n from scratch on CPU at {args.imgsz}, batch {args.batch}; each search {args.budget_min:g} min, "
        f"trials of at most {args.search_epochs} epochs; retrain {args.retrain_epochs} epochs, seeds {args.seeds}",
        "",
        *search_table(searches, args.budget_min),
        "",
        *retrain_table(rows),
        "",
        "paired differences on the test split (mean over seeds; 95% interval over images and seeds):",
        *difference_lines(differences),
    ]
    if levers:
        parts += ["", "test-time levers on a's first retrained model (paired, test split):", *lever_lines(levers)]
    if op:
        parts += ["", *point_lines(op, args)]
    return "\n".join(parts)


def run_searches(data: Path, args, out: Path, parent) -> dict[str, dict]:
    """Each search in turn, each within the budget; what each found, also kept in searches.json."""
    searches: dict[str, dict] = {}
    for key in args.searches:
        if key == "a":
            searches[key] = search_facemask(data, args, out, parent.run_id)
        elif key in ("b", "c"):
            searches[key] = search_ultralytics(key, data, args, out, parent.run_id)
        else:
            searches[key] = {"config": {}}
        print(f"search {key} ({NAMES[key]}): {json.dumps(searches[key], default=str)}", flush=True)
        (out / "searches.json").write_text(json.dumps(searches, indent=1, default=str))
    return searches


def main() -> None:
    args = parse_args()
    configure_runtime()
    out = args.out or Path(tempfile.mkdtemp(prefix="facemask-tuners-"))
    out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    from facemask.tracking import RunLogger

    started = time.perf_counter()
    data = prepare_data(args, out)
    args.test_data = data
    # A retrain-only run (--searches-json) continues the parent run its searches were logged under.
    earlier = out / "parent_run_id"
    previous = earlier.read_text().strip() if args.searches_json and earlier.is_file() else None
    parent = RunLogger(
        args.experiment,
        f"tuners-{time.strftime('%Y%m%d-%H%M%S')}",
        tracking_uri=args.tracking_uri,
        system_metrics=False,
        run_id=previous,
        reopen=previous is not None,
    )
    earlier.write_text(parent.run_id)
    if previous is None:
        parent.log_params({k: str(v) for k, v in vars(args).items()})
    searches = (
        json.loads(args.searches_json.read_text()) if args.searches_json else run_searches(data, args, out, parent)
    )
    retrain = args.retrain.split(",") if args.retrain else list(searches)
    configs = {k: s["config"] for k, s in searches.items() if s.get("config") is not None and k in retrain}
    (out / "configs.yaml").write_text(yaml.safe_dump(configs))
    rows = retrain_all(configs, data, args, out, parent.run_id)
    differences = compare_all(rows, list(configs), args)
    first_a = next((r for r in rows if r["variant"] == "a"), None)
    levers, op = {}, None
    if first_a:
        model = str(
            Path(first_a["predictions"]).parents[1] / "runs" / f"a-seed{first_a['seed']}" / "weights" / "best.pt"
        )
        levers = test_time_levers(model, searches["a"]["top_weights"], args)
        op = operating_point(model, args)
    table = report(searches, rows, differences, levers, op, args)
    print(f"\n{table}\n\ntotal {(time.perf_counter() - started) / 60:.0f} min")
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "searches": searches,
        "rows": rows,
        "differences": {k: v.to_dict() for k, v in differences.items()},
        "levers": {k: {**v, "difference": v["difference"].to_dict()} for k, v in levers.items()},
        "operating_point": json.loads(op["point"].to_tag()) if op else None,
        "minutes": (time.perf_counter() - started) / 60,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.txt").write_text(table)
    parent.log_dict(results, "results.json")
    parent.log_dict({"table": table}, "table.json")
    parent.end("FINISHED")
    print(f"results: {out / 'results.json'}  MLflow: {args.tracking_uri} (experiment {args.experiment!r})")


if __name__ == "__main__":
    main()

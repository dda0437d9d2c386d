"""Benchmark: does a study that weighs score against cost give a deployable choice that a
single-objective study cannot, at equal wall-clock?

The same training images and validation split, the same wall-clock budget (`--budget-min`) for
each search, one after another on this machine:

    a   `facemask tune` as today: one objective (val mAP50-95), yolo26n at `--imgsz`, ASHA,
        the from-scratch space warm-started (benchmark_tuners.py's search a)
    e   `facemask tune --latency-target cpu-onnx`: the same space with the size searched too
        (`--sizes`, a choice), two objectives (val mAP50-95, latency), no ASHA; its Pareto front
    b   Ultralytics' `model.tune()` at `--imgsz` (optional: `--searches a,e,b`)

Then a's best, b's best and every configuration on e's front are trained from scratch for the
same epochs (`--retrain-epochs`) with each of `--seeds`, at their own size, and scored on the
test split; each front version is paired against a's best (the difference in test mAP50, with
its 95% interval over images and seeds). Each is costed as the study costs a trial: batch-1
latency on one CPU core with onnxruntime (facemask.training.cost). The issue's targets are
checked at the end: a front version at `--fps` or more on one core within 90% of a's test
mAP50, and one faster than a's best and not worse.

    python jobs/benchmarks/benchmark_front.py [--source data/kaggle] [--budget-min 10] \
        [--sizes 160,224,320] [--retrain-epochs 4] [--seeds 0]
    python jobs/benchmarks/benchmark_front.py --synth 40 --budget-min 0.5 --retrain-epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from benchmark_tuners import (  # noqa: E402
    DEFAULT_SOURCE,
    SCRATCH_SPACE,
    prepare_data,
    retrain_all,
    search_facemask,
    search_ultralytics,
)

from facemask.core.classes import CLASS_NAMES  # noqa: E402
from facemask.core.runtime import configure_runtime  # noqa: E402
from facemask.quality.bootstrap import ImagePredictions, paired_bootstrap  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--synth", type=int, default=0, help="Generated images instead of --source (a smoke run).")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--searches", default="a,e", help="a, e and optionally b (model.tune()).")
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--grace", type=int, default=2)
    parser.add_argument("--reduction", type=float, default=3)
    parser.add_argument("--space", type=Path, default=SCRATCH_SPACE)
    parser.add_argument("--sizes", default="160,224,320", help="e: the sizes searched.")
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--model", default="yolo26n.yaml")
    parser.add_argument("--imgsz", type=int, default=320, help="a and b: the one size they train at.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split", default="0.65,0.1,0.25")
    parser.add_argument("--balance", type=float, default=0.5)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--experiment", default="benchmark-front")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.searches = args.searches.split(",")
    return args


def search_front(data: Path, args, out: Path, parent: str) -> dict:
    """e: the two-objective study within the budget; its front's configurations, sizes included."""
    from facemask.core.runtime import init_ray
    from facemask.core.settings import StudyConfig
    from facemask.tracking import client
    from facemask.training.tune import tune

    doc = yaml.safe_load(args.space.read_text())
    sizes = [int(s) for s in args.sizes.split(",")]
    doc["space"]["imgsz"] = {"type": "choice", "values": sizes}
    # The warm start at each size: the front is then never emptier than the known configuration.
    baseline = doc.get("baseline") or [{}]
    first = baseline[0] if isinstance(baseline, list) else baseline
    doc["baseline"] = [dict(first, imgsz=size) for size in sizes]
    space = out / "front_space.yaml"
    space.write_text(yaml.safe_dump(doc))
    init_ray()
    cfg = StudyConfig(
        data=data, model=args.model, imgsz=args.imgsz, batch=args.batch, trials=1000, epochs=args.search_epochs,
        time_budget_s=args.budget_min * 60, search_space=space, cpus_per_trial=1, register=False,
        storage=str(out / "study"), name="front-study", experiment=args.experiment, seed=0,
        tracking_uri=args.tracking_uri, latency_target="cpu-onnx",
    )  # fmt: skip
    result = tune(cfg)
    client(args.tracking_uri).set_tag(result.parent_run_id, "mlflow.parentRunId", parent)
    configs = {}
    for point in result.front:
        trial = next(t for t in result.trials if t["trial_id"] == point["trial_id"])
        configs[f"e{len(configs) + 1}"] = dict(trial["config"])
    return {
        "front": result.front,
        "configs": configs,
        "started": len(result.trials),
        "finished": result.counts.get("finished", 0),
        "trial_epochs": result.trial_epochs,
        "seconds": result.seconds,
    }


def retrain(searches: dict, data: Path, args, out: Path, parent: str) -> list[dict]:
    """a's and b's best at --imgsz, and each front configuration at its own size."""
    configs = {k: searches[k]["config"] for k in ("a", "b") if k in searches}
    return retrain_all(configs | searches.get("e", {}).get("configs", {}), data, args, out, parent)


def costed_table(rows: list[dict], args) -> tuple[list[str], dict]:
    """Each retrained variant: size, latency on one core, test mAP50, and its paired difference to a."""
    from facemask.training.cost import measure_latency

    variants = sorted({r["variant"] for r in rows}, key=lambda v: (v != "a", v))
    load = {(r["variant"], r["seed"]): ImagePredictions.load(r["predictions"]) for r in rows}
    size = {r["variant"]: r["imgsz"] for r in rows}
    # One measurement per size, shared by the variants at it: the same architecture costs the same.
    by_size = {imgsz: measure_latency(args.model, imgsz, "cpu-onnx").median_ms for imgsz in sorted(set(size.values()))}
    latency = {v: by_size[size[v]] for v in variants}
    mean = {
        v: sum(r["test"]["overall"]["mAP50"][0] for r in rows if r["variant"] == v) / len(args.seeds) for v in variants
    }
    lines = [
        f"| variant | size | ms a frame (1 core) | fps | test mAP50 | vs a's best (paired, 95%) | {args.fps:g} fps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    figures = {}
    for v in variants:
        diff = None
        if v != "a" and "a" in variants:
            diff = paired_bootstrap(
                [load[(v, s)] for s in args.seeds], [load[("a", s)] for s in args.seeds], CLASS_NAMES,
                resamples=args.resamples,
            ).overall["mAP50"]  # fmt: skip
        shown = diff.signed() if diff else "-"
        ok = "yes" if 1000 / latency[v] >= args.fps else "no"
        lines.append(
            f"| {v} | {size[v]} | {latency[v]:.1f} | {1000 / latency[v]:.0f} | {mean[v]:.3f} | {shown} | {ok} |"
        )
        figures[v] = {"imgsz": size[v], "latency_ms": latency[v], "test_mAP50": mean[v]}
        figures[v]["difference"] = {"value": diff.value, "low": diff.low, "high": diff.high} if diff else None
    return lines, figures


def targets(figures: dict, args) -> list[str]:
    """The issue's two targets, each met or not, from the costed table."""
    if "a" not in figures:
        return []
    best = figures["a"]
    front = {k: f for k, f in figures.items() if k.startswith("e")}
    edge = [
        k
        for k, f in front.items()
        if 1000 / f["latency_ms"] >= args.fps and f["test_mAP50"] >= 0.9 * best["test_mAP50"]
    ]
    faster = [
        k for k, f in front.items()
        if f["latency_ms"] < best["latency_ms"] and f["difference"] and f["difference"]["high"] >= 0
    ]  # fmt: skip
    return [
        f"a front version at {args.fps:g} fps or more with test mAP50 >= 90% of a's ({0.9 * best['test_mAP50']:.3f}): "
        + (", ".join(edge) if edge else "none"),
        "a front version faster than a's best, test mAP50 not worse (interval reaching 0 or above): "
        + (", ".join(faster) if faster else "none"),
    ]


def main() -> None:
    args = parse_args()
    configure_runtime()
    out = args.out or Path(tempfile.mkdtemp(prefix="facemask-front-"))
    out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    from facemask.tracking import RunLogger

    started = time.perf_counter()
    data = prepare_data(args, out)
    args.test_data = data
    parent = RunLogger(args.experiment, f"front-{time.strftime('%Y%m%d-%H%M%S')}", tracking_uri=args.tracking_uri)
    parent.log_params({k: str(v) for k, v in vars(args).items()})
    searches: dict[str, dict] = {}
    for key in args.searches:
        if key == "a":
            searches[key] = search_facemask(data, args, out, parent.run_id)
        elif key == "e":
            searches[key] = search_front(data, args, out, parent.run_id)
        elif key == "b":
            searches[key] = search_ultralytics("b", data, args, out, parent.run_id)
        print(f"search {key}: {json.dumps(searches[key], default=str)}", flush=True)
        (out / "searches.json").write_text(json.dumps(searches, indent=1, default=str))
    rows = retrain(searches, data, args, out, parent.run_id)
    lines, figures = costed_table(rows, args)
    front = searches.get("e", {}).get("front", [])
    table = "\n".join(
        [
            f"{args.model} from scratch on CPU; each search {args.budget_min:g} min, trials of at most "
            f"{args.search_epochs} epochs; e searched sizes {args.sizes} and kept a front of {len(front)}; "
            f"retrain {args.retrain_epochs} epochs, seeds {args.seeds}",
            "",
            *lines,
            "",
            *targets(figures, args),
        ]
    )
    print(f"\n{table}\n\ntotal {(time.perf_counter() - started) / 60:.0f} min")
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "searches": searches, "figures": figures}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.txt").write_text(table)
    parent.log_dict(results, "results.json")
    parent.end("FINISHED")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()

"""`facemask evaluate`, `compare` and `promote`: scores with intervals, and the gate; `rollback`,
`calibrate`, `ensemble` and `lineage`: what the registry holds, and where it came from."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from facemask.cli.base import (
    EXIT_CODE_OPTION,
    EXIT_NEGATIVE,
    JSON_OPTION,
    emit,
    hidden_alias,
    main,
    results_footer,
)
from facemask.cli.data import read_config, source_reading
from facemask.core.errors import ConfigError
from facemask.core.modelref import REGISTERED_MODEL
from facemask.core.runtime import configure_runtime
from facemask.core.settings import (
    TrainConfig,
    default,
)

# What `evaluate` and `compare` score a model on.
SCORED_DATA = click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="data.yaml from `facemask data prepare`, or your own labelled images (VOC or YOLO folder, COCO JSON), "
    "every one of them scored.",
)
SCORED_SPLIT = click.option(
    "--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]), help="Of a data.yaml."
)


@main.command("evaluate")
@click.option(
    "--model-uri", required=True, help="models:/facemask-detector@champion, models:/NAME/N, runs:/ID/..., or a .pt"
)
@SCORED_DATA
@SCORED_SPLIT
@click.option("--imgsz", default=default(TrainConfig, "imgsz"), show_default=True)
@click.option("--batch", default=16, show_default=True)
@click.option("--device", default=default(TrainConfig, "device"), show_default=True)
@click.option(
    "--resamples", default=1000, show_default=True, help="Bootstrap resamples of the images for the intervals."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap resampling.")
@source_reading
@JSON_OPTION
def evaluate_command(model_uri, data, split, imgsz, batch, device, resamples, seed, as_json, **reading):
    """Measure a model on the clean test split, with 95% bootstrap intervals over its images;
    log it to the model's run and version."""
    configure_runtime()
    from facemask.quality.evaluate import evaluate
    from facemask.tracking import default_tracking_uri

    if resamples < 100:
        raise ConfigError(f"--resamples {resamples}: at least 100 (1000 gives stable 95% intervals)")
    store = default_tracking_uri()
    # Ultralytics' progress bars write to stdout too; stdout carries only the result.
    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate(
            model_uri,
            data,
            split=split,
            imgsz=imgsz,
            batch=batch,
            device=device,
            resamples=resamples,
            seed=seed,
            tracking_uri=store,
            read=read_config(**reading),
        )
    if as_json:
        emit(True, result.to_dict())
    else:
        click.echo(result.table())
        click.echo("\n" + result.intervals.table(f"{result.split}, with 95% bootstrap intervals:"))
        if result.problems.get("items"):
            click.echo(
                f"  not scored: {json.dumps(result.problems['counts'])} (unknown classes are dropped boxes; "
                "listed in the evaluation report)"
            )
    if not as_json and result.run_id:
        click.echo(
            results_footer(
                store,
                run_id=result.run_id,
                experiment=None,
                model=model_uri if model_uri.startswith("models:/") else None,
            )
        )


@main.command("compare")
@click.argument("model_a")
@click.argument("model_b")
@SCORED_DATA
@SCORED_SPLIT
@click.option("--imgsz", default=default(TrainConfig, "imgsz"), show_default=True)
@click.option("--device", default=default(TrainConfig, "device"), show_default=True)
@click.option("--resamples", default=1000, show_default=True)
@click.option("--level", default=0.95, show_default=True, help="Level of the paired intervals.")
@source_reading
@JSON_OPTION
@EXIT_CODE_OPTION
@hidden_alias("--confidence", "level")
def compare_command(model_a, model_b, data, split, imgsz, device, resamples, level, as_json, exit_code, **reading):
    """Compare two models on the same images: per-class AP differences (A - B) with paired
    bootstrap intervals. MODEL_A and MODEL_B are model URIs or .pt files. With --exit-code,
    exits 3 when the overall mAP50-95 difference is not distinguishable from 0."""
    configure_runtime()
    from facemask.quality.evaluate import compare, difference_table
    from facemask.tracking import default_tracking_uri

    if not 0 < level < 1:
        raise ConfigError(f"--level {level}: a level between 0 and 1, such as 0.95")
    scoring = {
        "split": split,
        "imgsz": imgsz,
        "device": device,
        "resamples": resamples,
        "tracking_uri": default_tracking_uri(),
    }
    with contextlib.redirect_stdout(sys.stderr):
        a, b, difference = compare(model_a, model_b, data, level, read=read_config(**reading), **scoring)
    overall = difference.overall["mAP50-95"]
    verdict = "A better" if overall.low > 0 else "B better" if overall.high < 0 else "not distinguishable"
    text = a.intervals.table(f"A: {model_a}") + "\n\n" + b.intervals.table(f"B: {model_b}") + "\n\n"
    text += difference_table(difference, model_a, model_b)
    payload = {"a": model_a, "b": model_b, "verdict": verdict, "difference": difference.to_dict()}
    payload |= {"scores": {"a": a.intervals.to_dict(), "b": b.intervals.to_dict()}}
    emit(as_json, payload, text)
    if exit_code and verdict == "not distinguishable":
        sys.exit(EXIT_NEGATIVE)


@main.command("promote")
@click.option("--model-uri", default=None, help="models:/facemask-detector/N (or choose one by --max-latency-ms).")
@click.option(
    "--max-latency-ms",
    type=float,
    default=None,
    help="Instead of --model-uri: the best-scoring version whose measured latency fits this budget.",
)
@click.option("--latency-target", default="cpu-onnx", show_default=True, help="Where --max-latency-ms was measured.")
@click.option("--study", default=None, help="With --max-latency-ms: only this study's front.")
@click.option("--registered-model", "name", default=REGISTERED_MODEL, show_default=True, help="With --max-latency-ms.")
@click.option("--alias", default="champion", show_default=True)
@click.option(
    "--level",
    default=0.95,
    show_default=True,
    help="Promote only if the paired bootstrap interval of the gain, at this level, lies above 0.",
)
@click.option("--force", is_flag=True, help="Move the alias without comparing scores.")
@click.option(
    "--canary",
    type=float,
    default=None,
    metavar="P",
    help="Instead of moving the alias, send P% of its default traffic to the version (@challenger); "
    "`promote` without --canary or `rollback` ends it (docs/operating.md).",
)
@JSON_OPTION
@EXIT_CODE_OPTION
@hidden_alias("--confidence", "level")
def promote_command(
    model_uri, max_latency_ms, latency_target, study, name, alias, level, force, canary, as_json, exit_code
):
    """Move an alias to a version only if it beats the current holder beyond noise: a paired
    bootstrap of their test predictions on the same images. Every move is recorded for
    `facemask rollback`; endpoints serving the alias follow within their refresh_s. With
    --max-latency-ms, the version is the best-scoring one that fits the budget on --latency-target
    (a study's front, `facemask tune --latency-target`). With --exit-code, exits 3 when the alias
    stays where it was."""
    configure_runtime()
    from facemask.quality.promotion import promote
    from facemask.tracking import default_tracking_uri

    if (model_uri is None) == (max_latency_ms is None):
        raise click.UsageError("give --model-uri or --max-latency-ms, one of them")
    tracking_uri = default_tracking_uri()
    choice = None
    if max_latency_ms is not None:
        from facemask.quality.budget import choose_version

        choice = choose_version(name, latency_target, max_latency_ms, tracking_uri, study=study)
        model_uri = f"models:/{name}/{choice.version}"
        click.echo(f"chosen by budget: {choice.reason}", err=True)
    decision = promote(model_uri, tracking_uri, alias=alias, force=force, confidence=level, canary=canary)
    if decision.promoted and canary is not None:
        from facemask.quality.rollout import challenger_alias

        text = (
            f"version {decision.candidate} takes {canary:g}% of @{alias}'s traffic as @{challenger_alias(alias)}, "
            f"version {decision.champion} the rest: {decision.reason}"
        )
    elif decision.promoted:
        was = f" (was version {decision.champion})" if decision.champion else ""
        text = f"promoted version {decision.candidate} @{alias}{was}: {decision.reason}"
    else:
        text = (
            f"kept version {decision.champion or 'none'} @{alias}, not version {decision.candidate}: {decision.reason}"
        )
    payload = {
        "promoted": decision.promoted,
        "model": decision.name,
        "alias": alias,
        "candidate": decision.candidate,
        "champion": decision.champion,
        "holder": decision.candidate if decision.promoted and canary is None else decision.champion,
        "reason": decision.reason,
        "canary_percent": canary if decision.promoted else None,
        "candidate_score": decision.candidate_score,
        "champion_score": decision.champion_score,
        "chosen_by_budget": choice.reason if choice else None,
    }
    emit(as_json, payload, text)
    if exit_code and not decision.promoted:
        sys.exit(EXIT_NEGATIVE)


@main.command("rollback")
@click.option("--registered-model", "name", default=REGISTERED_MODEL, show_default=True, help="The registered model.")
@click.option("--alias", default="champion", show_default=True)
@JSON_OPTION
@hidden_alias("--model", "name")
def rollback_command(name, alias, as_json):
    """Undo the last rollout step of an alias: end a running canary, else give the alias back to
    the version that held it before the last `promote`. Endpoints follow within their refresh_s."""
    configure_runtime()
    from facemask.quality.rollout import rollback
    from facemask.tracking import default_tracking_uri

    done = rollback(name, alias, default_tracking_uri())
    if done.ended_canary:
        text = f"ended the canary of version {done.from_version}: version {done.to_version} takes all of @{alias}"
    else:
        text = f"rolled @{alias} back from version {done.from_version} to version {done.to_version}"
    payload = {
        "model": name,
        "alias": alias,
        "from": done.from_version,
        "holder": done.to_version,
        "ended_canary": done.ended_canary,
    }
    emit(as_json, payload, text)


@main.command("lineage")
@click.option("--registered-model", "name", default=REGISTERED_MODEL, show_default=True, help="The registered model.")
@JSON_OPTION
def lineage_command(name, as_json):
    """Which dataset version trained each registered version, and which dataset each was built on
    (`data prepare --keep-splits`), from the registry alone."""
    configure_runtime()
    from facemask.learning.lineage import format_lineage, lineage
    from facemask.tracking import default_tracking_uri

    found = lineage(name, default_tracking_uri())
    emit(as_json, found, format_lineage(found))


@main.command("calibrate")
@click.option("--model-uri", required=True, help="models:/facemask-detector/N (or @alias): the version to calibrate.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml: chosen on its val split.")
@click.option(
    "--sizes",
    default="320,416,640",
    show_default=True,
    help="Inference sizes to try; the one of best val mAP50 is kept. Registering a version tries the size it "
    "was trained at, a third larger, and 640.",
)
@click.option(
    "--precision",
    type=click.FloatRange(0, 1),
    default=None,
    help="Per class, the lowest threshold reaching this precision on val (default: the threshold of best F1).",
)
@click.option("--device", default=default(TrainConfig, "device"), show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the point; do not store it.")
@JSON_OPTION
def calibrate_command(model_uri, data, sizes, precision, device, dry_run, as_json):
    """Choose a version's operating point on val (its inference size, one threshold per class) and
    store it with the version: `predict`, Serve, /live and the page answer at it unless a request
    gives conf or imgsz."""
    configure_runtime()
    from facemask.quality.calibrate import calibrate, store
    from facemask.tracking import default_tracking_uri

    try:
        candidates = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--sizes {sizes!r}: comma-separated integers, e.g. 320,416,640") from None
    if not candidates or min(candidates) < 32:
        raise ConfigError(f"--sizes {sizes!r}: at least one size, each at least 32")
    store_uri = default_tracking_uri()
    with contextlib.redirect_stdout(sys.stderr):
        point, read = calibrate(model_uri, data, candidates, precision, tracking_uri=store_uri, device=device)
    version = None if dry_run else store(model_uri, point, store_uri)
    payload = {"model_uri": model_uri, "version": version, "operating_point": point.describe(), "val_mAP50": read}
    text = (
        f"{model_uri}: answers at {point.imgsz} px (val mAP50 by size: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in read.items())
        + ")\nthresholds ("
        + point.rule
        + "): "
        + ", ".join(f"{k} {v:.3f}" for k, v in point.conf.items())
        + ("\nnot stored (--dry-run)" if dry_run else f"\nstored with version {version}")
    )
    emit(as_json, payload, text)


@main.command("ensemble")
@click.argument("members", nargs=-1, required=True)
@click.option(
    "--data", type=click.Path(path_type=Path), required=True, help="data.yaml: scored on test, calibrated on val."
)
@click.option(
    "--imgsz", default=default(TrainConfig, "imgsz"), show_default=True, help="Size the members are scored at."
)
@click.option(
    "--fusion-weights", "weights", default=None, help="Fusion weight of each member, comma-separated (default: equal)."
)
@click.option("--fusion-iou", default=0.55, show_default=True, help="IoU above which two members' boxes are one face.")
@click.option(
    "--registered-model",
    "name",
    default=REGISTERED_MODEL,
    show_default=True,
    help="The registered model to add the version to.",
)
@click.option("--resamples", default=1000, show_default=True)
@JSON_OPTION
@hidden_alias("--name", "name")
@hidden_alias("--weights", "weights")
def ensemble_command(members, data, imgsz, weights, fusion_iou, name, resamples, as_json):
    """Register MEMBERS (model URIs, e.g. models:/facemask-detector/3 ...) as one version whose
    answer is the weighted-box fusion of theirs; it is scored on the test split against each member
    (paired) and calibrated on val. Serve it like any version; it costs one model call per member."""
    configure_runtime()
    from facemask.quality.ensemble import register_ensemble
    from facemask.tracking import default_tracking_uri

    try:
        fusion_weights = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise ConfigError(f"--weights {weights!r}: comma-separated numbers, one per member") from None
    with contextlib.redirect_stdout(sys.stderr):
        result = register_ensemble(
            list(members), data, default_tracking_uri(), imgsz, fusion_weights, fusion_iou, name, resamples=resamples
        )
    lines = [f"registered {name} version {result.version} (run {result.run_id}): the fusion of {len(members)} models"]
    for member, gain in result.test.items():
        d = gain["overall"]["mAP50"]
        lines.append(f"  test mAP50, ensemble minus {member}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
    lines.append("  ms per image: " + ", ".join(f"{k} {v:.0f}" for k, v in result.ms_per_image.items()))
    emit(as_json, {**result.__dict__}, "\n".join(lines))

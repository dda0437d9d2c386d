"""`facemask evaluate`, `compare` and `promote`: scores with intervals, and the gate."""

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
from facemask.errors import ConfigError
from facemask.modelref import REGISTERED_MODEL
from facemask.runtime import configure_runtime
from facemask.settings import (
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
    from facemask.evaluate import evaluate
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
    from facemask.evaluate import compare, difference_table
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
@click.option("--model-uri", required=True, help="models:/facemask-detector/N")
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
def promote_command(model_uri, alias, level, force, canary, as_json, exit_code):
    """Move an alias to a version only if it beats the current holder beyond noise: a paired
    bootstrap of their test predictions on the same images. Every move is recorded for
    `facemask rollback`; endpoints serving the alias follow within their refresh_s. With
    --exit-code, exits 3 when the alias stays where it was."""
    configure_runtime()
    from facemask.promotion import promote
    from facemask.tracking import default_tracking_uri

    decision = promote(model_uri, default_tracking_uri(), alias=alias, force=force, confidence=level, canary=canary)
    if decision.promoted and canary is not None:
        from facemask.rollout import challenger_alias

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
    }
    emit(as_json, payload, text)
    if exit_code and not decision.promoted:
        sys.exit(EXIT_NEGATIVE)


@main.command("rollback")
@click.option("--model", "name", default=REGISTERED_MODEL, show_default=True, help="The registered model.")
@click.option("--alias", default="champion", show_default=True)
@JSON_OPTION
def rollback_command(name, alias, as_json):
    """Undo the last rollout step of an alias: end a running canary, else give the alias back to
    the version that held it before the last `promote`. Endpoints follow within their refresh_s."""
    configure_runtime()
    from facemask.rollout import rollback
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

"""The `facemask` command. Each command parses, sets up global state, calls one core function.

Every option's default comes from the stage's config dataclass in `facemask.settings`.
A stage module is imported inside its command: the stages pull in numpy, Pillow, Ray and
Ultralytics, and `facemask --help` must stay fast (under 150 ms). A `FacemaskError` (a
mistake the user can fix) prints one line and exits 2; anything else is a bug and says so.
Every command that produces a result prints it as one JSON object with `--json` (docs/cli.md
documents each shape and the exit codes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

import click

from facemask import __version__
from facemask.errors import ConfigError, EndpointError, FacemaskError, StudyInterrupted
from facemask.lifecycle import (
    at_forced_stop,
    end_processes,
    handle_stop_signals,
    note_processes,
    stop_exit_code,
    stop_signal,
    stopped_meanwhile,
)
from facemask.runtime import configure_runtime, init_ray
from facemask.settings import (
    SOURCE_FORMATS,
    AugmentConfig,
    DistributedConfig,
    PredictConfig,
    PrepareConfig,
    ReadConfig,
    ServeConfig,
    StudyConfig,
    TrainConfig,
    default,
    is_stream,
)

KAGGLE_DATASET = "andrewmvd/face-mask-detection"
DEBUG_ENV = "FACEMASK_DEBUG"
# Exit codes (docs/cli.md): 0 done; 1 a failure that is not the input's (a bug, an endpoint's own
# error or no endpoint at all); 2 a mistake the user can fix; 3 with --exit-code, a negative
# answer (promote kept the champion, compare found no difference); 130/143 stopped by a signal.
EXIT_FAILURE, EXIT_USAGE, EXIT_NEGATIVE = 1, 2, 3


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    """One line on stderr and exit `code` (2: the user's mistake, with its fix in `message`)."""
    if _debug():
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class ServerFailure(FacemaskError):
    """An endpoint failed, or none answered: not the user's input, so it exits 1, not 2."""


# Where a --json result goes: the real stdout, while everything else printed meanwhile
# (Ultralytics writes progress and notices to stdout) goes to stderr.
_results_out: list = []


def JSON_OPTION(fn):
    """--json: the command's result as one JSON object, and nothing else, on stdout (shapes: docs/cli.md)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        if not kw["as_json"]:
            return fn(*args, **kw)
        _results_out.append(sys.stdout)
        # Not put back afterwards: what prints after the result (Ray's log monitor relaying a
        # worker's last lines, exit handlers) must not follow the JSON on stdout.
        sys.stdout = sys.stderr
        try:
            return fn(*args, **kw)
        finally:
            _results_out.pop()

    help_text = "Print the result as one JSON object on stdout, and nothing else there (shapes: docs/cli.md)."
    return click.option("--json", "as_json", is_flag=True, help=help_text)(wrapper)


EXIT_CODE_OPTION = click.option(
    "--exit-code", is_flag=True, help=f"Exit {EXIT_NEGATIVE} on a negative answer instead of 0 (docs/cli.md)."
)


def emit(as_json: bool, payload: dict, text: str | None = None) -> None:
    """The command's result on stdout: `payload` as JSON, or `text` for a reader."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str), file=_results_out[-1] if _results_out else None)
    elif text is not None:
        click.echo(text)


def hidden_alias(old: str, param: str):
    """Keep an option's former name working for a release: hidden from --help, it sets `param`
    and says once on stderr that the name changed."""

    def decorate(fn):
        import functools

        hidden = f"_former_{param}"

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            value = kw.pop(hidden)
            if value is not None:
                ctx = click.get_current_context()
                target = next(p for p in ctx.command.params if p.name == param)
                click.echo(f"note: {old} is now {target.opts[0]}; {old} goes away in the next release", err=True)
                kw[param] = target.type_cast_value(ctx, value)
            return fn(*args, **kw)

        return click.option(old, hidden, hidden=True, default=None)(wrapper)

    return decorate


# What a stopped command leaves behind, in the one line it prints (tune says it in StudyInterrupted).
STOP_HINTS = {
    "data": "nothing was kept that a rerun needs: run the same command again",
    "train": "its MLflow run is marked KILLED; run the same command again to train anew",
    "predict": "the files written so far are in --out; run the same command again to redo the rest",
    "serve": "the endpoint and its replicas are down; run the same command to serve again",
    "evaluate": "nothing was logged; run the same command again",
}


def _stopped(ctx: click.Context, detail: str | None = None) -> None:
    """One line saying what was stopped and how to go on, then exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    import signal

    sig = signal.Signals(stop_signal() or signal.SIGINT).name
    click.echo(f"stopped by {sig}: {stop_summary(ctx.invoked_subcommand or 'command', detail)}", err=True)
    sys.exit(stop_exit_code())


def stop_summary(command: str, detail: str | None = None) -> str:
    """What was stopped and how to go on: `detail`, or the command's own hint."""
    return f"facemask {command}: {detail or STOP_HINTS.get(command, 'run the same command again')}"


class FacemaskGroup(click.Group):
    """The one place errors become exit codes: FacemaskError 2, Ctrl-C 130, SIGTERM 143, a bug 1."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        # What a forced stop says, should one cut this command short (runtime.at_forced_stop).
        at_forced_stop(lambda: stop_summary(name))
        return name, command, rest

    def invoke(self, ctx: click.Context):
        handle_stop_signals()
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except StudyInterrupted as exc:
            _stopped(ctx, str(exc))
        except ServerFailure as exc:
            _fail(str(exc), EXIT_FAILURE)
        except FacemaskError as exc:
            _fail(str(exc))
        except KeyboardInterrupt as exc:
            _stopped(ctx, str(exc) or None)
        except Exception as exc:
            if stopped_meanwhile():  # the stop's own doing (a worker it ended), not a bug
                _stopped(ctx, None)
            if _debug():
                traceback.print_exc()
            else:
                click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
                click.echo(
                    f"This is a bug in facemask, not in your input. Rerun with {DEBUG_ENV}=1 for the "
                    "traceback, and report it.",
                    err=True,
                )
            sys.exit(1)


def results_footer(
    tracking: str | None = None,
    experiment: str | None = None,
    run_id: str | None = None,
    model: str | None = None,
    paths: dict[str, Path | str] | None = None,
) -> str:
    """The closing lines of a command: where its results are, and the commands that open them.

    Under `ray job submit` these are the last lines of the job's log, so a user finds the
    results without knowing where Ray ran the job.
    """
    import shlex

    lines = ["results:"]
    if tracking:
        where = ", ".join(
            ([f"experiment {experiment!r}"] if experiment else []) + ([f"run {run_id}"] if run_id else [])
        )
        lines.append(f"  MLflow:     {tracking}" + (f"  ({where})" if where else ""))
    if model:
        lines.append(f"  model:      {model}")
    for name, path in (paths or {}).items():
        lines.append(f"  {name + ':':11s} {path}")
    if tracking:
        env = f"MLFLOW_TRACKING_URI={shlex.quote(tracking)}"
        if tracking.startswith(("http://", "https://")):
            lines.append(f"  open:       {tracking} in a browser (the MLflow UI)")
        else:
            lines.append(f"  open:       mlflow ui --backend-store-uri {shlex.quote(tracking)}")
        if model:
            lines.append(f"  serve:      {env} facemask serve --model-uri {model}")
    return "\n".join(lines)


def _options(config: type, *specs: tuple) -> callable:
    """Click options whose defaults are `config`'s field defaults: (flag, field, kwargs) each.

    kwargs["param"] names the function's parameter when the field's name is taken by
    another config's option (both TrainConfig and DistributedConfig have `workers`).
    """

    def decorate(fn):
        for flag, name, kwargs in reversed(specs):
            kwargs = dict(kwargs)
            param = kwargs.pop("param", name)
            fn = click.option(flag, param, default=default(config, name), show_default=True, **kwargs)(fn)
        return fn

    return decorate


@click.group(cls=FacemaskGroup)
@click.version_option(__version__, "-V", "--version", prog_name="facemask")
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
def main(verbose: bool) -> None:
    """Train, tune, track and serve a YOLO26 face-mask detector on Ray."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # FACEMASK_DEBUG also shows what only a developer reads, such as Ray Data's per-stage stats.
    logging.getLogger("facemask").setLevel(logging.DEBUG if os.environ.get(DEBUG_ENV) else logging.INFO)


@main.group()
def data() -> None:
    """Get, generate and prepare datasets."""


@data.command("synth")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write images/ and annotations/.")
@click.option("--images", default=120, show_default=True, help="Number of images.")
@click.option("--seed", default=0, show_default=True)
@JSON_OPTION
def data_synth(out: Path, images: int, seed: int, as_json: bool) -> None:
    """Generate a procedural face-mask dataset in the Kaggle VOC layout."""
    from facemask.synth import synthesize

    counts = synthesize(out, images=images, seed=seed)
    text = f"wrote {images} images to {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items())
    emit(as_json, {"out": str(out), "format": "voc", "images": images, "objects": counts}, text)


@data.command("fetch")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for images/ and annotations/.")
@JSON_OPTION
def data_fetch(out: Path, as_json: bool) -> None:
    """Download the Kaggle Face Mask Detection dataset (needs network and kagglehub)."""
    hint = f"use `facemask data synth --out {out}` for demo data, or pass --source DIR to prepare a local copy"
    try:
        import kagglehub
    except ImportError:
        raise ConfigError(f"kagglehub is not installed (pip install 'facemask[fetch]'); or {hint}") from None
    try:
        downloaded = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:  # kagglehub raises many network error types
        raise ConfigError(f"could not download {KAGGLE_DATASET} ({type(exc).__name__}); offline? {hint}") from None
    for part in ("annotations", "images"):
        if not (downloaded / part).is_dir():
            raise ConfigError(f"{downloaded} has no {part}/ folder; the Kaggle layout changed?")
        shutil.copytree(downloaded / part, out / part, dirs_exist_ok=True)
    emit(as_json, {"out": str(out), "dataset": KAGGLE_DATASET, "format": "voc"}, f"fetched {KAGGLE_DATASET} to {out}")


def _parse_split(ctx, param, value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected three numbers like 0.7,0.2,0.1") from None
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r}: expected three numbers like 0.7,0.2,0.1")
    return parts  # type: ignore[return-value]


def _parse_pastes(ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit():
            raise click.BadParameter(f"{value!r}: expected CLASS=COUNT, e.g. mask_weared_incorrect=300")
        out.append((name, int(count)))
    return tuple(out)


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def source_reading(fn):
    """How a labelled source is read (`prepare --source`, `evaluate`/`compare --data`)."""
    options = [
        click.option(
            "--format",
            "source_format",
            type=click.Choice(list(SOURCE_FORMATS)),
            default=default(ReadConfig, "format"),
            show_default=True,
            help="The source's layout: voc, yolo (data.yaml + images + labels) or coco (JSON); "
            "auto detects it (docs/your-own-data.md).",
        ),
        click.option(
            "--class-map",
            default="",
            help="LABEL=CLASS pairs, comma-separated, or a YAML file of them: what the source's labels "
            "mean (mask=with_mask,no_mask=without_mask,mask_incorrect=mask_weared_incorrect; ignore drops one).",
        ),
        click.option(
            "--drop-unknown",
            is_flag=True,
            help="Drop and count boxes whose label maps to no class, instead of stopping.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def read_config(source_format: str, class_map: str, drop_unknown: bool) -> ReadConfig:
    from facemask.sources import parse_class_map

    pairs = tuple(parse_class_map(class_map).items())
    return ReadConfig(format=source_format, class_map=pairs, drop_unknown=drop_unknown).validate()


@data.command("prepare")
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    required=True,
    help="A labelled dataset: VOC folder, YOLO folder or COCO JSON (see --format).",
)
@source_reading
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder for the YOLO dataset.")
@_options(
    PrepareConfig,
    (
        "--engine",
        "engine",
        {
            "type": click.Choice(["auto", "ray", "local"]),
            "help": "auto: Ray on a connected cluster or above "
            "the measured input size (docs/training.md), else one process.",
        },
    ),
    ("--seed", "seed", {}),
)
@click.option(
    "--split",
    "split_",
    default=_csv(default(PrepareConfig, "split")),
    show_default=True,
    callback=_parse_split,
    help="train,val,test fractions.",
)
@click.option(
    "--synthetic-classes",
    default=_csv(default(AugmentConfig, "classes")),
    show_default=True,
    help="Classes to paste, comma-separated.",
)
@_options(
    AugmentConfig,
    (
        "--balance",
        "balance_ratio",
        {
            "type": float,
            "help": "Paste until each chosen class reaches this fraction of the majority class (0: no pasting).",
        },
    ),
    ("--pastes-per-image", "pastes_per_image", {}),
    ("--blend", "blend", {"type": click.Choice(["overlay", "feather", "poisson"])}),
)
@click.option("--pastes", multiple=True, callback=_parse_pastes, help="CLASS=COUNT (repeatable); overrides --balance.")
@click.option(
    "--repeat-threshold",
    type=float,
    default=None,
    help="Repeat-factor sampling: list each training image max(1, sqrt(T/f)) times, f being the fraction "
    "of training images holding its rarest class (train.txt; val and test untouched).",
)
@click.option("--no-plots", is_flag=True, help="Skip class_distribution.png and synthetic_samples.jpg.")
@JSON_OPTION
def data_prepare(source, out, split_, synthetic_classes, pastes, no_plots, as_json, **kw):
    """Read VOC, YOLO or COCO, split stratified, copy-paste on train only, write YOLO data.yaml + manifest.json."""
    from facemask.pipeline import choose_engine, prepare

    # The options named as AugmentConfig's fields; the rest of `kw` are PrepareConfig's.
    augment = {name: kw.pop(name) for name in ("balance_ratio", "pastes_per_image", "blend")}
    classes = tuple(c for c in synthetic_classes.split(",") if c)
    augment = AugmentConfig(classes=classes, pastes_per_class=pastes, **augment)
    read = read_config(kw.pop("source_format"), kw.pop("class_map"), kw.pop("drop_unknown"))
    cfg = PrepareConfig(source=source, out=out, split=split_, plots=not no_plots, augment=augment, read=read, **kw)
    cfg = cfg.validate()
    engine, why = choose_engine(cfg)
    click.echo(f"engine: {engine} ({why})", err=True)
    if engine == "ray":
        init_ray(torch=False)
    result = prepare(dataclasses.replace(cfg, engine=engine))
    m = result.manifest
    if as_json:
        keys = ("fingerprint", "inputs", "labels", "counts", "augment", "repeat")
        payload = {"data_yaml": str(result.data_yaml), "manifest": str(result.manifest_path), "engine": engine}
        payload |= {k: m[k] for k in keys if k in m} | {"problems": m["problems"]["counts"]}
        emit(True, payload)
        return
    click.echo(f"data.yaml: {result.data_yaml}  ({m['inputs']['format']} source)")
    click.echo(f"manifest:  {result.manifest_path}  fingerprint {m['fingerprint'][:12]}")
    for split, c in m["counts"].items():
        objects = ", ".join(f"{k}={v['original']}+{v['pasted']}" for k, v in c["objects"].items())
        click.echo(
            f"  {split:5s} images {c['images']['original']}+{c['images']['synthetic']} synthetic; "
            f"objects (original+pasted) {objects}"
        )
    if "repeat" in m:
        r = m["repeat"]
        click.echo(
            f"  repeat-factor sampling (threshold {r['threshold']:g}): {r['images']} training images listed "
            f"{r['listed']} times in {r['list']}; factor per class "
            + ", ".join(f"{k}={v:.2f}" for k, v in r["class_factor"].items())
        )
    renamed = {k: v for k, v in m["labels"].items() if v["class"] != k}
    if renamed:
        click.echo(
            "  labels: " + ", ".join(f"{k} -> {v['class'] or 'dropped'} ({v['objects']})" for k, v in renamed.items())
        )
    problems = m["problems"]
    if problems["items"]:
        click.echo(f"  problems: {json.dumps(problems['counts'])} (details in manifest.json)")
    click.echo(results_footer(paths={"data.yaml": result.data_yaml, "manifest": result.manifest_path}))


def _parse_overrides(values: tuple[str, ...]) -> dict:
    """Ultralytics train args given as key=value; values parsed as YAML (0.01, true, [1,2])."""
    import yaml

    out = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected key=value, e.g. lr0=0.005 or mosaic=0.5")
        out[key] = yaml.safe_load(raw)
    return out


@main.command("train", context_settings={"ignore_unknown_options": True})
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml from `facemask data prepare`.")
@_options(
    TrainConfig,
    (
        "--weights",
        "model",
        {"help": "What training starts from: yolo26s.pt (pretrained), yolo26n.yaml (from scratch) or a path."},
    ),
    ("--epochs", "epochs", {}),
    ("--imgsz", "imgsz", {}),
    ("--batch", "batch", {}),
    ("--device", "device", {"help": "auto, cpu, 0 or 0,1 (several GPUs of one node)."}),
    ("--experiment", "experiment", {}),
    ("--name", "run_name", {"help": "MLflow run name (and output folder)."}),
    ("--project", "project", {"type": click.Path(path_type=Path)}),
    ("--seed", "seed", {}),
    ("--workers", "workers", {"help": "Dataloader workers."}),
)
@_options(
    DistributedConfig,
    (
        "--ray-workers",
        "workers",
        {
            "param": "ray_workers",
            "help": "Ray Train workers training one model together (DDP; 1: one process). docs/training.md.",
        },
    ),
    ("--gpus-per-worker", "gpus_per_worker", {"type": float}),
    ("--cpus-per-worker", "cpus_per_worker", {"type": float}),
    (
        "--storage",
        "storage",
        {
            "help": "Checkpoints of a --ray-workers run: a path every node sees, or "
            "s3://... (default: PROJECT/ray-train)."
        },
    ),
    ("--max-failures", "max_failures", {"help": "Restarts of the worker group from its newest checkpoint."}),
)
@click.option("--register", is_flag=True, help="Register best.pt as a new version of facemask-detector.")
@JSON_OPTION
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@hidden_alias("--model", "model")
def train_command(data, overrides, ray_workers, gpus_per_worker, cpus_per_worker, storage, max_failures, as_json, **kw):
    """Train one YOLO26 model, tracked in MLflow. Extra Ultralytics args as key=value.

    The val scores it prints are the last epoch's, on the split that chose the best epoch:
    `facemask evaluate` gives the test split's, with intervals."""
    configure_runtime()
    from facemask.tracking import tracking_uri
    from facemask.train import train

    cfg = TrainConfig(data=data, overrides=_parse_overrides(overrides), tracking_uri=tracking_uri(), **kw)
    # The fields in their order, each option named as its field.
    ray_cfg = DistributedConfig(ray_workers, gpus_per_worker, cpus_per_worker, storage, max_failures)
    if ray_cfg.workers > 1:
        from facemask.distributed import check_distributed, train_distributed

        check_distributed(cfg, ray_cfg)
        init_ray()
        result = train_distributed(cfg, ray_cfg)
    else:
        result = train(cfg)
    model = f"models:/{cfg.registered_model}/{result.version}" if result.version else None
    if as_json:
        payload = {
            "run_id": result.run_id,
            "epochs": result.epochs_run,
            "seconds": round(result.seconds, 1),
            "weights": str(result.best),
            "metrics": result.metrics,
            "version": result.version,
            "model_uri": model,
            "tracking_uri": cfg.tracking_uri,
            "experiment": cfg.experiment,
            "logging_failures": result.logging_failures,
        }
        emit(True, payload)
        return
    click.echo(f"run {result.run_id}: {result.epochs_run} epochs in {result.seconds:.0f}s, weights {result.best}")
    click.echo(
        "  last epoch on val (no interval; `facemask evaluate` scores the test split with one): "
        + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.startswith("val/"))
    )
    if result.version:
        click.echo(f"  registered {model}")
    if result.logging_failures:
        click.echo(f"  warning: {result.logging_failures} MLflow calls failed; see the log above", err=True)
    click.echo(results_footer(cfg.tracking_uri, cfg.experiment, result.run_id, model, {"weights": result.best}))


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
    from facemask.tracking import tracking_uri

    if resamples < 100:
        raise ConfigError(f"--resamples {resamples}: at least 100 (1000 gives stable 95% intervals)")
    store = tracking_uri()
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
            uri=store,
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
    from facemask.tracking import tracking_uri

    if not 0 < level < 1:
        raise ConfigError(f"--level {level}: a level between 0 and 1, such as 0.95")
    scoring = {"split": split, "imgsz": imgsz, "device": device, "resamples": resamples, "uri": tracking_uri()}
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
@click.option("--force", is_flag=True, help="Move the alias without comparing scores (also a rollback).")
@JSON_OPTION
@EXIT_CODE_OPTION
@hidden_alias("--confidence", "level")
def promote_command(model_uri, alias, level, force, as_json, exit_code):
    """Move an alias to a version only if it beats the current holder beyond noise: a paired
    bootstrap of their test predictions on the same images. With --exit-code, exits 3 when
    the alias stays where it was."""
    configure_runtime()
    from facemask.evaluate import promote
    from facemask.tracking import tracking_uri

    decision = promote(model_uri, tracking_uri(), alias=alias, force=force, confidence=level)
    if decision.promoted:
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
        "holder": decision.candidate if decision.promoted else decision.champion,
        "reason": decision.reason,
        "candidate_score": decision.candidate_score,
        "champion_score": decision.champion_score,
    }
    emit(as_json, payload, text)
    if exit_code and not decision.promoted:
        sys.exit(EXIT_NEGATIVE)


def _parse_resources(ctx, param, values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in values:
        name, _, amount = item.partition("=")
        try:
            out[name] = float(amount)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected NAME=AMOUNT, e.g. trainer=1") from None
    return out


@main.command("tune")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml from `facemask data prepare`.")
@_options(
    StudyConfig,
    ("--weights", "model", {"help": "What every trial starts from: yolo26s.pt, yolo26n.yaml or a path."}),
    ("--trials", "trials", {}),
    ("--epochs", "epochs", {"help": "Epochs per trial (ASHA's max_t)."}),
    ("--imgsz", "imgsz", {}),
    ("--batch", "batch", {}),
    (
        "--search-space",
        "search_space",
        {"type": click.Path(path_type=Path, exists=True), "help": "YAML search space; default: the packaged one."},
    ),
    ("--cpus-per-trial", "cpus_per_trial", {"type": float}),
    (
        "--ray-workers-per-trial",
        "ray_workers_per_trial",
        {
            "help": "Ray Train workers per trial (and the final "
            "retrain), sharing its CPUs and GPUs: one model "
            "trained data-parallel."
        },
    ),
)
@click.option(
    "--gpus-per-trial",
    type=float,
    default=None,
    help="1, 0.5 or 0 (N with --ray-workers-per-trial N); default: 1 if the cluster has GPUs, else 0.",
)
@click.option("--trial-resources", multiple=True, callback=_parse_resources, help="NAME=AMOUNT: a custom Ray resource.")
@_options(
    StudyConfig,
    ("--max-concurrent", "max_concurrent", {"type": int, "help": "Cap on trials at once (never more than fit)."}),
    ("--time-budget-s", "time_budget_s", {"type": float}),
    ("--storage", "storage", {"help": "Local path or s3://bucket/prefix."}),
    ("--name", "name", {}),
    ("--final-epochs", "final_epochs", {"help": "Retrain the best config this long (0: keep the trial's weights)."}),
    ("--grace-period", "grace_period", {}),
    ("--reduction-factor", "reduction_factor", {"type": float}),
    ("--max-failures", "max_failures", {}),
    ("--metric", "metric", {"help": "Reported metric to optimise (val)."}),
    ("--mode", "mode", {"type": click.Choice(["max", "min"])}),
    ("--experiment", "experiment", {}),
    ("--seed", "seed", {}),
)
@click.option("--resume", is_flag=True, help="Continue an interrupted study of this --storage/--name.")
@click.option(
    "--auto-resume",
    is_flag=True,
    help="Continue the study this --storage/--name holds, or start it if there is none; a finished one is "
    "reported and not run again (for jobs that may be retried, such as a RayJob).",
)
@click.option("--no-promote", is_flag=True, help="Register but do not move @champion.")
@JSON_OPTION
@hidden_alias("--model", "model")
def tune_command(gpus_per_trial, trial_resources, no_promote, auto_resume, as_json, **kw):
    """Search hyperparameters with Ray Tune (Optuna TPE + ASHA); register and gate the best.

    The best trial's val scores are the selection's (no interval); its test scores have their
    intervals in `facemask evaluate`."""
    from facemask.tracking import tracking_uri
    from facemask.train import resolve_model_source
    from facemask.tune import check_trial_shape, saved_study, tune

    kw["tracking_uri"] = tracking_uri()
    # What can be refused without a cluster is refused before one starts.
    resolve_model_source(kw["model"])
    check_trial_shape(StudyConfig(gpus_per_trial=gpus_per_trial or 0, trial_resources=trial_resources, **kw))
    if auto_resume:
        state, path, run_id = saved_study(StudyConfig(**kw))
        if state == "finished":
            text = f"study {path} has finished (MLflow run {run_id}); nothing to run again\n"
            text += results_footer(kw["tracking_uri"], kw["experiment"], run_id, None, {"study": path})
            emit(as_json, {"state": "finished", "study": str(path), "parent_run_id": run_id}, text)
            return
        click.echo(f"study {path}: {'resumed' if state == 'interrupted' else 'new'}", err=True)
        kw["resume"] = state == "interrupted"
    configure_runtime()
    init_ray()
    import ray

    if gpus_per_trial is None:  # one GPU per training process, when there are GPUs
        gpus_per_trial = float(kw["ray_workers_per_trial"]) if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    cfg = StudyConfig(gpus_per_trial=gpus_per_trial, promote=not no_promote, trial_resources=trial_resources, **kw)
    result = tune(cfg)
    model = None
    if result.version:
        model = f"models:/{cfg.registered_model}" + ("@champion" if result.promoted else f"/{result.version}")
    if as_json:
        keys = ("parent_run_id", "best_trial", "best_val", "best_config", "counts", "trial_epochs", "test")
        payload = {"state": "finished", "study": result.storage_path} | {k: getattr(result, k) for k in keys}
        payload |= {"seconds": round(result.seconds, 1), "version": result.version, "model_uri": model}
        payload |= {"promoted": result.promoted, "promote_reason": result.promote_reason}
        emit(True, payload | {"tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment})
        return
    click.echo(study_table(result))
    click.echo(
        results_footer(cfg.tracking_uri, cfg.experiment, result.parent_run_id, model, {"study": result.storage_path})
    )


def study_table(result) -> str:
    lines = [
        f"study {result.storage_path}  (MLflow parent run {result.parent_run_id})",
        f"  trials: {result.counts['finished']} finished, {result.counts['stopped_early']} stopped early by ASHA, "
        f"{result.counts['failed']} failed; {result.trial_epochs} trial-epochs in {result.seconds:.0f}s",
        f"  best trial {result.best_trial}: val " + ", ".join(f"{k}={v:.4f}" for k, v in result.best_val.items()),
        "  test (clean split): " + ", ".join(f"{k}={v:.4f}" for k, v in result.test.items()),
        f"  registered version {result.version}; "
        + (
            f"promoted to @champion ({result.promote_reason})"
            if result.promoted
            else f"not promoted ({result.promote_reason or 'skipped'})"
        ),
        "  best params:",
    ]
    lines += [
        f"    {k:15s} {v:.5g}" if isinstance(v, float) else f"    {k:15s} {v}"
        for k, v in sorted(result.best_config.items())
    ]
    return "\n".join(lines)


@main.command("serve")
@_options(
    ServeConfig,
    (
        "--model-uri",
        "model_uri",
        {"help": "models:/NAME@ALIAS, models:/NAME/N, runs:/..., or a local .pt/.onnx (air-gapped)."},
    ),
    (
        "--backend",
        "backend",
        {
            "type": click.Choice(["pt", "onnx", "simulated-gpu"]),
            "help": "pt (PyTorch) or onnx (onnxruntime). simulated-gpu is for capacity tests only: no model, "
            "each batch answered after a GPU's latency with a fixed pattern of boxes (docs/performance.md).",
        },
    ),
    (
        "--simulated-latency",
        "simulated_latency",
        {"help": "simulated-gpu: call time per batch size, BATCH:MS pairs (an H100's by default)."},
    ),
    ("--device", "device", {"help": "auto, cpu or a GPU index."}),
    ("--host", "host", {"help": "Proxy address; 0.0.0.0 exposes it (set FACEMASK_API_KEY)."}),
    (
        "--ingress",
        "ingress",
        {
            "type": click.Choice(["haproxy", "proxy"]),
            "help": "haproxy: HAProxy straight to each replica (several times less CPU per request, "
            "docs/performance.md); "
            "proxy: Serve's Python proxy with facemask's guard (docs/serving.md).",
        },
    ),
    ("--port", "port", {}),
    ("--replicas", "replicas", {"help": "Serve replicas (each holds the model)."}),
    ("--num-cpus", "num_cpus", {"help": "CPUs per replica."}),
    ("--num-gpus", "num_gpus", {"help": "GPUs per replica (0.25: four share one)."}),
    ("--max-batch-size", "max_batch_size", {}),
    (
        "--threads",
        "threads",
        {"type": int, "help": "CPU inference threads per replica (on CPU: replicas x threads = cores)."},
    ),
)
@click.option(
    "--print-node-env",
    is_flag=True,
    help="Print, as export lines, what a `ray start` node needs for this --ingress, and exit: "
    'eval "$(facemask serve --print-node-env)" before `ray start`.',
)
def serve_command(
    model_uri, backend, simulated_latency, host, ingress, port, replicas, num_cpus, num_gpus, print_node_env, **app
):
    """Serve the detector, its API and page on this machine's Ray (Ctrl-C stops it).

    With no Ray running here it starts one set up for --ingress. On a Ray started beforehand
    (`ray start`, a cluster), the ingress is the one its nodes were started with: it says which."""
    if print_node_env:
        import shlex

        from facemask.runtime import node_env

        click.echo("".join(f"export {k}={shlex.quote(v)}\n" for k, v in node_env(ingress).items()), nl=False)
        return
    configure_runtime()
    from facemask.detector import resolve_model
    from facemask.simulated_gpu import NAME as SIMULATED
    from facemask.simulated_gpu import parse_latency
    from facemask.tracking import tracking_uri

    # Fail here, in one line, rather than in a replica's retries.
    if backend == SIMULATED:
        parse_latency(simulated_latency)
        model_uri = SIMULATED
    else:
        resolve_model(model_uri, backend=backend, uri=tracking_uri())
    # Imported here: the Serve application module imports Ray Serve itself.

    from facemask.serving import AppArgs

    try:
        # `app` holds the options named as AppArgs' fields (device, max_batch_size, threads).
        resources = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus}}
        app |= {"model_uri": model_uri, "backend": backend, "simulated_latency": simulated_latency}
        args = AppArgs(**app, deployment_options=resources)
    except ValueError as exc:  # pydantic's ValidationError: an option out of range
        raise ConfigError(str(exc)) from None
    init_ray(serving=True, ingress=ingress)
    from facemask.runtime import node_ingress

    running = node_ingress()
    if running != ingress:
        click.echo(
            f"note: this machine's Ray was started before, without the settings for --ingress {ingress}, so "
            f"Serve runs its {'HAProxy' if running == 'haproxy' else 'Python proxy'} here; for {ingress}, start "
            f'Ray with them: eval "$(facemask serve --ingress {ingress} --print-node-env)" before `ray start`',
            err=True,
        )
    try:
        url = start_serving(args, host=host, port=port)
        click.echo(f"serving {model_uri} ({backend}, {running}) at {url}/  (API docs {url}/docs); Ctrl-C stops")
        wait_for_stop()
    finally:
        started = note_processes()  # what runs below this process now, and what ran below it
        stopped = stop_serving()
        import ray

        if not stopped:
            # Serve's call still waits in its thread: Ray's shutdown under it crashes the process,
            # so what Ray started here is ended first.
            end_processes(started)
        ray.shutdown()
        # A HAProxy that Serve restarted after a crash outlives Serve's shutdown; nothing else should.
        end_processes(started)


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM, which arrive as KeyboardInterrupt (`handle_stop_signals`),
    noting what runs below this process meanwhile, so that a stop can end it all (`note_processes`)."""
    import time

    while True:
        note_processes()
        time.sleep(1.0)


SHUTDOWN_TIMEOUT_S = 15.0


def stop_serving(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
    """Delete the apps and stop Serve, but never wait past `timeout_s`; False when it did not finish in time.

    When SIGTERM reaches the whole process group (`kill -- -PGID`, systemd), a local Ray
    started here dies with this process, and `serve.shutdown()` would wait for its
    controller for ever; the Ray processes are gone then, so there is nothing left to stop.
    """
    import threading

    from ray import serve

    done = threading.Event()

    def shutdown() -> None:
        with contextlib.suppress(Exception):
            serve.shutdown()
        done.set()

    threading.Thread(target=shutdown, name="serve-shutdown", daemon=True).start()
    if not done.wait(timeout_s):
        click.echo(
            f"warning: Serve did not shut down within {timeout_s:.0f}s (its cluster is gone?); exiting", err=True
        )
        return False
    return True


def start_serving(
    args, host: str = "127.0.0.1", port: int = 8000, name: str = "facemask", log_level: str = "INFO"
) -> str:
    """Start Serve's proxy on host:port and deploy the app; returns its URL once it answers."""
    from ray import serve

    from facemask.serving import build_app

    logging_config = {"log_level": log_level}
    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    serve.run(build_app(args), name=name, route_prefix="/", logging_config=logging_config)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


@main.command("query")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--url",
    default=lambda: os.environ.get("FACEMASK_URL", "http://127.0.0.1:8000"),
    show_default="FACEMASK_URL or http://127.0.0.1:8000",
)
@click.option(
    "--model-version",
    "model_id",
    default=None,
    help="A registered version (3) or alias (champion); default: the server's.",
)
@click.option("--conf", type=float, default=None)
@click.option("--iou", type=float, default=None)
@click.option("--imgsz", type=int, default=None)
@click.option("--max-det", type=int, default=None)
@click.option("--save", type=click.Path(path_type=Path), default=None, help="Also write the annotated image here.")
@click.option(
    "--deadline",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to keep retrying a refused or reset connection (an endpoint restarting its proxy).",
)
@JSON_OPTION
@hidden_alias("--model", "model_id")
def query_command(image, url, model_id, conf, iou, imgsz, max_det, save, deadline, as_json):
    """Send IMAGE to a running endpoint and print its detections (API key from FACEMASK_API_KEY).

    Exits 2 when the endpoint refuses the request (4xx: the image, a parameter, the key) and
    1 when it fails or none answers."""
    from facemask.client import Client

    client = Client(url, deadline_s=deadline)
    params = {"conf": conf, "iou": iou, "imgsz": imgsz, "max_det": max_det}
    try:
        result = client.predict(image, model=model_id, **params)
        if save:
            save.write_bytes(client.predict_image(image, model=model_id, **params))
    except EndpointError as exc:
        if exc.status >= 500:
            raise ServerFailure(f"{exc.status} {exc.error}: {url}: {exc.message}") from None
        raise EndpointError(exc.status, exc.error, f"{url}: {exc.message}") from None
    except OSError as exc:
        raise ServerFailure(
            f"{url}: no endpoint answered ({getattr(exc, 'reason', exc)}); start one with `facemask serve`"
        ) from None
    if as_json:
        emit(True, result)
        return
    click.echo(detections_table(result))
    if save:
        click.echo(f"annotated image: {save}")


def detections_table(result: dict) -> str:
    m, t, size = result["model"], result["timings"], result["image"]
    lines = [
        f"{len(result['detections'])} detections in {size['width']}x{size['height']} by "
        f"{m['name'] or m['uri']} v{m['version'] or '-'} ({m['backend']}), "
        f"inference {t['inference_ms']:.0f} ms, total {t['total_ms']:.0f} ms",
        "  counts: " + ", ".join(f"{k}={v}" for k, v in result["counts"].items()),
    ]
    for d in result["detections"]:
        b = d["box"]
        lines.append(
            f"  {d['label']:22s} {d['confidence']:.3f}  ({b['x1']:.0f}, {b['y1']:.0f}, {b['x2']:.0f}, {b['y2']:.0f})"
        )
    return "\n".join(lines)


@main.command("export")
@click.option("--model-uri", required=True, help="models:/facemask-detector/N, @alias, runs:/..., or a local .pt")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option(
    "--imgsz",
    default=default(TrainConfig, "imgsz"),
    show_default=True,
    help="Trace size; the export takes any size and batch.",
)
@click.option("--opset", type=int, default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also copy the file here.")
@JSON_OPTION
def export_command(model_uri, fmt, imgsz, opset, out, as_json):
    """Export to ONNX and log it beside the .pt (serve it with --backend onnx)."""
    configure_runtime()
    from facemask.export import export_onnx
    from facemask.tracking import tracking_uri

    result = export_onnx(model_uri, imgsz=imgsz, opset=opset, out=out, uri=tracking_uri())
    if as_json:
        emit(True, {"path": str(result.path), "artifact_uri": result.artifact_uri, "version": result.version})
        return
    click.echo(f"exported {result.path}")
    if result.artifact_uri:
        click.echo(
            f"  logged as {result.artifact_uri}"
            + (f"; version {result.version} tagged onnx_artifact" if result.version else "")
        )


@main.command("predict")
@click.argument("source")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for annotated output and detections.jsonl."
)
@_options(
    PredictConfig,
    ("--model-uri", "model_uri", {}),
    ("--conf", "conf", {}),
    ("--iou", "iou", {}),
    ("--imgsz", "imgsz", {}),
    ("--max-det", "max_det", {}),
    ("--backend", "backend", {"type": click.Choice(["pt", "onnx"])}),
    ("--device", "device", {}),
    ("--batch", "batch_size", {"help": "Images per model call."}),
    ("--concurrency", "concurrency", {"type": int, "help": "Model actors (default: one per CPU)."}),
    (
        "--engine",
        "engine",
        {
            "type": click.Choice(["auto", "ray", "local"]),
            "help": "auto: Ray Data on a connected cluster or a machine with more than one core, else one process.",
        },
    ),
    ("--max-frames", "max_frames", {"type": int, "help": "Camera/stream: stop after this many processed frames."}),
    ("--max-seconds", "max_seconds", {"type": float, "help": "Camera/stream: stop after this many seconds."}),
)
@click.option("--save", is_flag=True, help="Camera/stream: also write annotated.mp4.")
@JSON_OPTION
@hidden_alias("--batch-size", "batch_size")
def predict_command(source, out, as_json, **kw):
    """Annotate a folder of images or a video with Ray Data, or track faces live on a camera index (0)
    or stream URL (rtsp://, http://); write annotated files, detections.jsonl and summary.json."""
    configure_runtime()
    from facemask.tracking import tracking_uri

    source = source if is_stream(source) else Path(source)
    cfg = PredictConfig(source=source, out=out, tracking_uri=tracking_uri(), **kw).validate()
    if is_stream(source):
        from facemask.live.streams import predict_stream as predict
    else:
        from facemask.batch_predict import predict
        from facemask.runtime import cluster_connected

        if cfg.engine == "auto":
            ray_pays = cluster_connected() or (os.cpu_count() or 1) > 1  # docs/performance.md, batch inference
            cfg = dataclasses.replace(cfg, engine="ray" if ray_pays else "local")
        if cfg.engine == "ray":
            init_ray()
    with contextlib.redirect_stdout(sys.stderr):
        result = predict(cfg)
    paths = {"annotated": result.annotated, "detections": result.jsonl, "summary": result.jsonl.parent / "summary.json"}
    if result.skipped:
        click.echo(
            f"  skipped {len(result.skipped)} unreadable files (listed in {result.jsonl.parent / 'summary.json'})",
            err=True,
        )
    if as_json:
        payload = {"kind": result.kind, "items": result.items, "seconds": round(result.seconds, 2)}
        payload |= {"detections": result.detections, "people": result.people, "frames": result.frames}
        payload |= {"skipped": len(result.skipped), "files": {k: str(v) for k, v in paths.items() if v is not None}}
        emit(True, payload)
        return
    noun = "images" if result.kind == "images" else "frames"
    click.echo(
        f"{result.items} {noun} in {result.seconds:.1f}s: "
        + ", ".join(f"{k}={v}" for k, v in result.detections.items())
    )
    click.echo((f"  annotated: {result.annotated}\n" if result.annotated else "") + f"  detections: {result.jsonl}")
    if result.people is not None:
        click.echo(
            f"  people: {result.people['people']} ("
            + ", ".join(f"{k}={v}" for k, v in result.people["by_class"].items())
            + ")"
            + (f"; frames dropped while the model was busy: {result.frames['dropped']}" if result.frames else "")
        )
    click.echo(results_footer(paths={k: v for k, v in paths.items() if v is not None}))


if __name__ == "__main__":
    main()

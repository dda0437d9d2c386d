"""`facemask data`: synthesise, fetch and prepare datasets; how a labelled source is read."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click

from facemask.cli.base import (
    JSON_OPTION,
    config_options,
    emit,
    main,
    results_footer,
)
from facemask.core.errors import ConfigError
from facemask.core.runtime import init_ray
from facemask.core.settings import (
    SOURCE_FORMATS,
    AugmentConfig,
    PrepareConfig,
    ReadConfig,
    default,
)

KAGGLE_DATASET = "andrewmvd/face-mask-detection"


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
    from facemask.data.synth import synthesize

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
    from facemask.data.sources import parse_class_map

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
@config_options(
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
@config_options(
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
@click.option(
    "--keep-splits",
    type=click.Path(path_type=Path),
    default=None,
    help="A previous version (its folder or splits.json): its images keep their splits, new ones go to "
    "train and val, the test split stays whole (docs/learning.md).",
)
@click.option("--no-plots", is_flag=True, help="Skip class_distribution.png and synthetic_samples.jpg.")
@JSON_OPTION
def data_prepare(source, out, split_, synthetic_classes, pastes, no_plots, as_json, **kw):
    """Read VOC, YOLO or COCO, split stratified, copy-paste on train only, write YOLO data.yaml + manifest.json."""
    from facemask.data.pipeline import choose_engine, prepare

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
        keys = ("fingerprint", "inputs", "labels", "counts", "augment", "repeat", "kept_splits")
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

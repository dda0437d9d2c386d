"""`prepare(cfg)`: a labelled source (VOC, YOLO or COCO) -> leak-free YOLO dataset, on Ray Data or in one process.

Parse, render and write are per-item pure functions run by `run_map`; split and
planning are cheap global steps done by the driver. Both engines call the same
functions with the same per-item seeds, so they write byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from facemask import __version__
from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import EmptyDatasetError, FacemaskError, InputNotFoundError
from facemask.core.manifest import write_manifest
from facemask.core.runtime import cluster_connected, resolve_path, where_relative
from facemask.core.settings import PrepareConfig, ReadConfig
from facemask.data.augment import SyntheticPlan, plan_synthetic, render_synthetic
from facemask.data.convert import make_tree, tree_sha256, write_data_yaml, write_original, write_synthetic
from facemask.data.plots import class_distribution, synthetic_samples
from facemask.data.records import ParseResult, Problem, Record, orphan_image_problems
from facemask.data.sampling import write_train_list
from facemask.data.sources import Listing, check_labels, list_source, parse_row
from facemask.data.split import SPLITS, split_for

log = logging.getLogger("facemask.prepare")
MANIFEST_FORMAT = 1
# Below this many items, starting a local Ray cluster and Ray Data's first dataset costs more
# than the second core saves; `jobs/benchmarks/benchmark_prepare.py` measures the crossover
# (docs/performance.md).
RAY_MIN_ITEMS = 4000


@dataclass
class PrepareResult:
    manifest: dict
    data_yaml: Path
    manifest_path: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(s["images"]["original"] + s["images"]["synthetic"] for s in self.manifest["counts"].values())


def choose_engine(cfg: PrepareConfig, local_cluster_ok: bool = True) -> tuple[str, str]:
    """The engine `cfg.engine` stands for, and why, in words for the log.

    auto picks Ray when a cluster is already connected (nothing to start), or when the input
    is large enough that a local cluster pays for its start-up and there is a second core
    to use; else one process. local_cluster_ok=False (library callers, which never start
    Ray themselves) picks Ray only for a connected cluster.
    """
    if cfg.engine != "auto":
        return cfg.engine, "asked for"
    if cluster_connected():
        return "ray", "a Ray cluster is connected"
    try:  # only counted here; a missing or odd source is prepare's to report
        listing = list_source(resolve_path(cfg.source), cfg.read.format)
        items, unit = len(listing.rows), listing.unit
    except (FacemaskError, OSError):
        items, unit = 0, "items"
    cpus = os.cpu_count() or 1
    if local_cluster_ok and cpus > 1 and items >= RAY_MIN_ITEMS:
        return "ray", f"{items} {unit} >= {RAY_MIN_ITEMS}, {cpus} CPUs: a local Ray cluster pays for its start-up"
    why = f"{items} {unit} < {RAY_MIN_ITEMS}" if cpus > 1 else "one CPU"
    return "local", f"{why}, no Ray cluster connected: one process is faster"


def run_map(fn: Callable[[dict], dict], rows: list[dict], engine: str, stage: str) -> list[dict]:
    """Apply `fn` to every row, in this process or as a Ray Data `map`; keep row order."""
    if not rows:
        return []
    if engine == "local":
        results, step = [], max(1, len(rows) // 10)
        for i, row in enumerate(rows, 1):
            results.append(fn(row))
            if i % step == 0 or i == len(rows):
                log.info("%s: %d/%d", stage, i, len(rows))
        return results
    import ray

    indexed = [{"_order": i, **row} for i, row in enumerate(rows)]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # A few blocks per CPU keeps every core busy to the end without drowning in tasks.
    blocks = min(len(rows), cpus * 4)
    context = ray.data.DataContext.get_current()
    reservation = context.op_resource_reservation_enabled
    # Each of our datasets is a single map, so per-operator reservation only holds
    # back CPUs: on a 2-core node it kept the second task waiting about a second.
    context.op_resource_reservation_enabled = False
    try:
        dataset = ray.data.from_items(indexed, override_num_blocks=blocks).map(
            functools.partial(_keep_order, fn), num_cpus=1
        )
        out = sorted(dataset.take_all(), key=lambda r: r["_order"])
        log.debug("%s stage, Ray Data stats:\n%s", stage, dataset.stats())
    finally:
        context.op_resource_reservation_enabled = reservation
    return [{k: v for k, v in r.items() if k != "_order"} for r in out]


def interleave(heavy: list[dict], light: list[dict]) -> list[dict]:
    """Spread the slow rows evenly through the light ones so no Ray block gets all of them."""
    if not heavy or not light:
        return heavy + light
    out, step = [], len(light) / len(heavy)
    taken = 0
    for i, row in enumerate(heavy):
        upto = round((i + 1) * step)
        out.append(row)
        out.extend(light[taken:upto])
        taken = upto
    return out + light[taken:]


def _keep_order(fn: Callable[[dict], dict], row: dict) -> dict:
    order = row.pop("_order")
    return {"_order": order, **fn(row)}


def _limit_threads() -> None:
    """One OpenCV thread per worker: Ray already runs one worker per core."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _parse_row(row: dict) -> dict:
    result = parse_row(row)
    return {
        "json": json.dumps(
            {
                "annotation": result.annotation,
                "record": result.record.to_json() if result.record else None,
                "problems": [asdict(p) for p in result.problems],
                "image": result.image,
                "annotation_sha256": result.annotation_sha256,
                "labels": result.labels,
            }
        )
    }


def _load_parse(row: dict) -> ParseResult:
    data = json.loads(row["json"])
    return ParseResult(
        annotation=data["annotation"],
        record=Record.from_json(data["record"]) if data["record"] else None,
        problems=[Problem(**p) for p in data["problems"]],
        image=data["image"],
        annotation_sha256=data["annotation_sha256"],
        labels=data["labels"],
    )


def _write_row(out: str, row: dict) -> dict:
    if row["kind"] == "original":
        entry = write_original(Record.from_json(row["record"]), row["split"], Path(out))
        return {"json": json.dumps({"entry": entry})}
    _limit_threads()
    rendered = render_synthetic(json.loads(row["job"]))
    entry = write_synthetic(rendered, Path(out))
    summary = {k: rendered[k] for k in ("background", "pasted", "unplaced", "poisson_fallbacks")}
    summary["boxes"] = [b.label for b in rendered["boxes"]]
    return {"json": json.dumps({"entry": entry, "synthetic": summary})}


def _sha256_file(path: Path) -> str:
    """A file's hash for the input fingerprint, read in chunks (an orphan may be any size).

    What cannot be read (a folder, a broken or looping link) hashes as its error, so the
    fingerprint still changes when the file does.
    """
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        return hashlib.sha256(f"unreadable: {type(exc).__name__}".encode()).hexdigest()


def collect_records(
    results: list[ParseResult], images: list[Path], source: Path, orphans: bool = True
) -> tuple[list[Record], list[Problem], dict[str, str]]:
    """Turn parse results into unique records, every problem, and a sha256 per input file;
    with `orphans`, images no result resolved to are problems too."""
    problems: list[Problem] = []
    hashes: dict[str, str] = {}
    records: list[Record] = []
    claimed: set[str] = set()
    stems: set[str] = set()
    for result in sorted(results, key=lambda r: r.annotation):
        hashes[result.annotation] = result.annotation_sha256
        problems.extend(result.problems)
        if result.image:
            claimed.add(result.image)
        record = result.record
        if record is None:
            continue
        hashes[record.image] = record.image_sha256
        stem = Path(record.image).stem
        if stem in stems:
            problems.append(
                Problem(
                    result.annotation,
                    "duplicate_image",
                    "skipped_file",
                    f"another annotation already uses an image with stem {stem!r}; keep one annotation per image",
                )
            )
            continue
        stems.add(stem)
        records.append(record)
    if orphans:
        problems.extend(orphan_image_problems(images, claimed))
    for path in images:
        if str(path) not in hashes:
            hashes[str(path)] = _sha256_file(path)
    return records, problems, hashes


def summarise_problems(problems: list[Problem], source: Path) -> dict:
    """Counts by action and kind, and every problem with a source-relative path."""

    def rel(path: str) -> str:
        # Box problems are "FILE object #N": make FILE relative, keep the object suffix.
        file, sep, index = path.partition(" object #")
        try:
            return str(Path(file).relative_to(source)) + sep + index
        except ValueError:
            return path

    by_action: dict[str, Counter] = {}
    for p in problems:
        by_action.setdefault(p.action, Counter())[p.kind] += 1
    return {
        "counts": {action: dict(sorted(c.items())) for action, c in sorted(by_action.items())},
        "skipped_files": sum(1 for p in problems if p.action == "skipped_file"),
        "items": sorted(
            ({"path": rel(p.path), "kind": p.kind, "action": p.action, "reason": p.reason} for p in problems),
            key=lambda d: (d["path"], d["kind"]),
        ),
    }


def _counts(split: dict[str, list[Record]], synthetic: list[dict]) -> dict:
    counts: dict = {}
    for name in SPLITS:
        objects = {c: {"original": 0, "synthetic": 0, "pasted": 0} for c in CLASS_NAMES}
        for record in split[name]:
            for box in record.boxes:
                objects[box.label]["original"] += 1
        synthetic_here = synthetic if name == "train" else []
        for item in synthetic_here:
            for label in item["boxes"]:
                objects[label]["synthetic"] += 1
            for paste in item["pasted"]:
                objects[paste["label"]]["pasted"] += 1
        counts[name] = {
            "images": {"original": len(split[name]), "synthetic": len(synthetic_here)},
            "objects": objects,
            "difficult": sum(1 for r in split[name] for b in r.boxes if b.difficult),
        }
    return counts


@dataclass
class SourceData:
    """A source as read: its listing, one record per usable image, every problem, a sha256 per
    input path, and every label found with its count and class."""

    listing: Listing
    records: list[Record]
    problems: list[Problem]
    hashes: dict[str, str]
    labels: dict


def read_source(source: Path, read: ReadConfig, engine: str, option: str) -> SourceData:
    """List and parse a labelled source of any format on `engine`, stop on unmapped labels
    (unless `read.drop_unknown`), and keep one record per image.

    Raises EmptyDatasetError, naming the counts and problems, when no image is usable or no
    image holds a face of a known class.
    """
    listing: Listing = list_source(source, read.format, read.mapping)
    parsed = [_load_parse(r) for r in run_map(_parse_row, listing.rows, engine, "parse")]
    labels = check_labels(parsed, read.mapping, read.drop_unknown, listing.root)
    images = listing.images
    records, problems, hashes = collect_records(parsed, images, listing.root, listing.format != "yolo")
    problems = listing.problems + problems
    counts = f"{len(listing.rows)} {listing.unit}, {len(images)} images ({listing.format})"
    if not records or not any(r.boxes for r in records):
        summary = summarise_problems(problems, listing.root)
        what = "no usable image" if not records else f"no face of a known class in {len(records)} usable images"
        raise EmptyDatasetError(
            f"{listing.root}: {what} ({counts}; problems: {summary['counts'] or 'none'}); check {option} "
            "points at a VOC, YOLO or COCO dataset"
        )
    return SourceData(listing, records, problems, hashes, labels)


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Build the YOLO dataset described by `cfg` and return its manifest.

    Raises InputNotFoundError for a missing source and EmptyDatasetError when no image
    is usable; every other bad input is skipped, counted and listed in the manifest.
    """
    cfg.validate()
    if cfg.engine == "auto":
        cfg = replace(cfg, engine=choose_engine(cfg, local_cluster_ok=False)[0])
    source, out = resolve_path(cfg.source), resolve_path(cfg.out)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    if not source.exists():
        raise InputNotFoundError(
            f"--source {source}: no such folder{where_relative(cfg.source)}; "
            "pass a VOC, YOLO or COCO dataset (docs/your-own-data.md)"
        )
    source_data = read_source(source, cfg.read, cfg.engine, "--source")
    listing, records = source_data.listing, source_data.records
    source = listing.root
    seconds["parse"] = time.perf_counter() - started

    split, kept = split_for(records, cfg, source)  # stratified, or keeping a previous version's
    plan: SyntheticPlan = plan_synthetic(split["train"], cfg.augment, cfg.seed)
    mark = time.perf_counter()
    entries, synthetic = write_images(cfg, out, split, plan)
    seconds["write"] = time.perf_counter() - mark

    found = (listing, source_data.hashes, summarise_problems(source_data.problems, source))
    manifest = build_manifest(cfg, source, out, found, split, plan, synthetic, entries, kept)
    manifest["labels"] = source_data.labels
    write_provenance(out / "synthetic.jsonl", synthetic, source)
    split_lists = {name: sorted(str(Path(r.image).relative_to(source)) for r in split[name]) for name in SPLITS}
    (out / "splits.json").write_text(json.dumps(split_lists, indent=1) + "\n")
    lists = {}
    if cfg.repeat_threshold is not None:
        manifest["repeat"] = write_train_list(out, cfg.repeat_threshold, cfg.seed, CLASS_NAMES)
        lists["train"] = manifest["repeat"]["list"]
    data_yaml = write_data_yaml(out, SPLITS, lists)
    manifest_path = write_manifest(out, manifest)
    if cfg.plots:
        class_distribution(manifest["counts"], out / "class_distribution.png")
        synthetic_samples(out, [s["image"] for s in synthetic], out / "synthetic_samples.jpg")
    seconds["total"] = time.perf_counter() - started
    log.info(
        "prepared %s in %.1fs (engine %s; parse %.2fs, write %.2fs): %s",
        out,
        seconds["total"],
        cfg.engine,
        seconds["parse"],
        seconds["write"],
        {k: v["images"] for k, v in manifest["counts"].items()},
    )
    return PrepareResult(manifest, data_yaml, manifest_path, seconds)


def write_images(cfg: PrepareConfig, out: Path, split: dict, plan: SyntheticPlan) -> tuple[list, list]:
    """Write every original and pasted image with its labels, in parallel on `cfg.engine`: each
    image's entry, and each paste's provenance (sorted by image)."""
    out.mkdir(parents=True, exist_ok=True)
    make_tree(out, SPLITS)
    synthetic_rows = [{"kind": "synthetic", "job": json.dumps(job)} for job in plan.jobs]
    original_rows = [{"kind": "original", "split": name, "record": r.to_json()} for name in SPLITS for r in split[name]]
    rows = interleave(synthetic_rows, original_rows)
    written = [
        json.loads(r["json"]) for r in run_map(functools.partial(_write_row, str(out)), rows, cfg.engine, "write")
    ]
    synthetic = sorted(
        (dict(w["synthetic"], image=w["entry"]["image"]) for w in written if "synthetic" in w),
        key=lambda s: s["image"],
    )
    return [w["entry"] for w in written], synthetic


def build_manifest(
    cfg: PrepareConfig,
    source: Path,
    out: Path,
    inputs: tuple,
    split: dict,
    plan,
    synthetic: list,
    entries: list,
    kept: dict | None = None,
) -> dict[str, Any]:
    """What a prepared dataset is: its fingerprint (inputs, config, version, the splits it kept),
    counts, pastes and outputs.

    `inputs` is what was read: (the source's listing, sha256 by input path, problems summary).
    """
    listing, hashes, problems = inputs
    digest = inputs_sha256(hashes, source)
    config = cfg.fingerprinted()
    identity = {"inputs": digest, "config": config, "version": __version__}
    if kept is not None:  # absent otherwise, so earlier fingerprints stay valid
        identity["kept_splits"] = kept["sha256"]
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    pasted = Counter(p["label"] for s in synthetic for p in s["pasted"])
    return {
        "format": MANIFEST_FORMAT,
        "fingerprint": fingerprint,
        "package_version": __version__,
        "source": str(source),
        "inputs": {
            "format": listing.format,
            "annotations": len(listing.rows),
            "images": len(listing.images),
            "sha256": digest,
        },
        "config": config,
        "counts": _counts(split, synthetic),
        "problems": problems,
        "augment": {
            "train_counts": plan.train_counts,
            "target_counts": plan.target_counts,
            "planned": plan.planned_pastes,
            "pasted": dict(sorted(pasted.items())),
            "unplaced": sum(s["unplaced"] for s in synthetic),
            "poisson_fallbacks": sum(s["poisson_fallbacks"] for s in synthetic),
            "notes": plan.notes,
        },
        "outputs": {"files": len(entries), "sha256": tree_sha256(out, entries)},
        **({"kept_splits": kept} if kept is not None else {}),
    }


def write_provenance(path: Path, synthetic: list[dict], source: Path) -> None:
    """One JSON line per synthetic image: its background and each pasted object's source, relative to `source`."""

    def relative(name: str) -> str:
        return str(Path(name).relative_to(source))

    with path.open("w") as f:
        for s in synthetic:
            pasted = [dict(p, source_image=relative(p["source_image"])) for p in s["pasted"]]
            line = {"image": s["image"], "background": relative(s["background"]), "pasted": pasted}
            f.write(json.dumps(line, sort_keys=True) + "\n")


def inputs_sha256(hashes: dict[str, str], source: Path) -> str:
    """One hash over every input file (source-relative path and content hash), whatever the folder."""
    return hashlib.sha256(
        "".join(f"{Path(p).relative_to(source)}\0{h}\n" for p, h in sorted(hashes.items())).encode()
    ).hexdigest()


def prepare_evaluation_set(source: Path, out: Path, read: ReadConfig | None = None) -> tuple[Path, dict]:
    """A labelled folder or COCO JSON (VOC, YOLO or COCO) as a YOLO dataset whose test split is
    every usable image, for scoring a model on a user's own held-out photos: (data.yaml, problems).

    Nothing is split, pasted or repeated. Bad input is skipped and counted as in `prepare`;
    labels go through `read`'s class map, and one that maps to no class stops the run unless
    `read.drop_unknown` (then its boxes are dropped and counted as `unknown_class`).
    """
    source, out = resolve_path(source), Path(out)
    source_data = read_source(source, read or ReadConfig(), "local", "--data")
    records, source = source_data.records, source_data.listing.root
    out.mkdir(parents=True, exist_ok=True)
    make_tree(out, SPLITS)
    entries = [write_original(r, "test", out) for r in records]
    summary = summarise_problems(source_data.problems, source)
    write_manifest(
        out,
        {
            "format": MANIFEST_FORMAT,
            "fingerprint": inputs_sha256(source_data.hashes, source),
            "source": str(source),
            "kind": "evaluation",
            "labels": source_data.labels,
            "counts": _counts({"train": [], "val": [], "test": records}, []),
            "problems": summary,
            "outputs": {"files": len(entries)},
        },
    )
    # Ultralytics wants a train and a val entry: both name the test images, and nothing trains on them.
    data = write_data_yaml(out, SPLITS, {"train": "images/test", "val": "images/test"})
    return data, summary

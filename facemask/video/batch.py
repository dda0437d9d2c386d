"""Batch inference with Ray Data over a folder of images or a video file.

    facemask predict SOURCE --model-uri models:/facemask-detector@champion --out DIR

A pool of Ray Data actors each loads the model once and takes batches of images (or
chunks of video frames). Outputs in DIR:
- `annotated/<same relative path>.jpg` for images, or `annotated.mp4` for a video;
- `detections.jsonl`: one line per image or frame, with its detections and counts (a
  video's frames also get a `track_id` per face); an image that cannot be read gets a
  line with its `error` instead (counted, never dropped);
- `summary.json`: counts, skipped files, model, timings; for a video or stream, people
  seen per mask state.
On a cluster, DIR must be on storage every node can write (NFS), as the actors write it.

A camera index (`0`) or a stream URL runs in one process as it arrives: `facemask.video.streams`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from facemask.core.classes import CLASS_NAMES, class_counts
from facemask.core.errors import ConfigError
from facemask.core.runtime import cluster_connected, resolve_device, resolve_path
from facemask.core.settings import IMAGE_SUFFIXES, PredictConfig, is_stream
from facemask.data.drawing import draw_boxes
from facemask.detection.detector import load_detector, resolve_model, upright_rgb
from facemask.serving.live.tracker import PeopleTracker

log = logging.getLogger(__name__)


@dataclass
class PredictResult:
    kind: str  # images | video
    items: int
    detections: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    jsonl: Path | None = None
    annotated: Path | None = None
    seconds: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)
    people: dict[str, Any] | None = None  # video and stream: people seen per mask state (tracked)
    frames: dict[str, int] | None = None  # stream: frames read, processed and dropped

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


class Annotator:
    """A Ray Data actor (or a plain object for engine=local): one model, many batches."""

    def __init__(self, cfg: PredictConfig) -> None:
        self.cfg = cfg
        # A Ray Data actor holds one CPU: one inference thread each, so actors do not oversubscribe the node.
        threads = 1 if cfg.engine == "ray" else None
        self.detector = load_detector(
            cfg.model_uri,
            device=resolve_device(cfg.device),
            backend=cfg.backend,
            threads=threads,
            warm=True,
            tracking_uri=cfg.tracking_uri,
        )

    def detect(self, images: list, conf: float | None = None) -> list[list[dict]]:
        found = self.detector.predict(
            images,
            conf=self.cfg.conf if conf is None else conf,
            iou=self.cfg.iou,
            imgsz=self.cfg.imgsz,
            max_det=self.cfg.max_det,
        )
        return [[d.to_dict() for d in detections] for detections in found]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return self.frames(batch) if "start" in batch else self.images(batch)

    def images(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from PIL import Image

        records: list[dict] = [{} for _ in batch["rel"]]
        loaded, where = [], []
        for i, (path, rel) in enumerate(zip(batch["path"], batch["rel"])):
            try:
                with Image.open(path) as image:
                    loaded.append(upright_rgb(image))
                where.append(i)
            except Exception as exc:  # Ultralytics patches Image.open; any failure is this file's problem
                records[i] = {"source": str(rel), "error": unreadable_reason(Path(path), exc)}
        for i, image, detections in zip(where, loaded, self.detect(loaded) if loaded else []):
            rel = str(batch["rel"][i])
            target = (self.cfg.out / "annotated" / rel).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            annotate(image, detections).save(target, quality=90)
            records[i] = record(detections, {"source": rel, "width": image.width, "height": image.height})
        return {"record": [json.dumps(r) for r in records]}

    def frames(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import cv2
        from PIL import Image

        out: dict[str, list] = {"frame": [], "record": [], "jpeg": []}
        for start, end in zip(batch["start"], batch["end"]):
            capture = cv2.VideoCapture(str(self.cfg.source))
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(start))
            frames = []
            for index in range(int(start), int(end)):
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append((index, Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))))
            capture.release()
            for offset in range(0, len(frames), self.cfg.batch_size):
                chunk = frames[offset : offset + self.cfg.batch_size]
                for (index, image), detections in zip(chunk, self.detect([f for _, f in chunk])):
                    drawn = cv2.cvtColor(np.asarray(annotate(image, detections)), cv2.COLOR_RGB2BGR)
                    out["frame"].append(index)
                    out["record"].append(
                        json.dumps(record(detections, {"frame": index, "time_s": round(index / fps, 3)}))
                    )
                    out["jpeg"].append(cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        return out


def unreadable_reason(path: Path, exc: Exception) -> str:
    """Why an image file could not be used, in words a user acts on (not the decoder's import errors)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot read the file ({err.strerror or type(err).__name__}); a broken or looping link?"
    if path.is_dir():
        return "a folder named like an image"
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and "cannot identify" not in str(exc):
        return f"truncated or corrupt image ({exc})"
    return "not an image Pillow can read (JPEG, PNG, WebP, BMP are)"


def record(detections: list[dict], head: dict) -> dict:
    return {**head, "detections": detections, "counts": class_counts(detections)}


def annotate(image, detections: list[dict]):
    boxes = [(d["class_id"], d["box"]["x1"], d["box"]["y1"], d["box"]["x2"], d["box"]["y2"]) for d in detections]
    return draw_boxes(image, boxes)


def list_images(folder: Path) -> list[dict[str, str]]:
    """Every path named like an image, readable or not: a broken link or a folder is reported, not skipped."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [{"path": str(p), "rel": str(p.relative_to(folder))} for p in paths]


def frame_ranges(video: Path, per_task: int) -> tuple[list[dict[str, int]], float, tuple[int, int]]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ConfigError(f"{video}: OpenCV cannot open this video")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    if total <= 0:
        raise ConfigError(f"{video}: no frames could be counted")
    return [{"start": s, "end": min(total, s + per_task)} for s in range(0, total, per_task)], fps, size


def run_batches(cfg: PredictConfig, rows: list[dict], batch_size: int) -> Iterator[dict[str, list]]:
    """Annotator's outputs batch by batch, in the input order, on Ray Data or in this process."""
    if cfg.engine == "local":
        annotator = Annotator(cfg)
        for offset in range(0, len(rows), batch_size):
            chunk = rows[offset : offset + batch_size]
            yield annotator({key: np.array([r[key] for r in chunk]) for key in chunk[0]})
        return
    import ray

    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order
    # The video is written frame by frame and the JSONL line by line, in the source's order;
    # the caller's own datasets keep their setting once this one is done.
    context.execution_options.preserve_order = True
    try:
        actors = cfg.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        gpus = 1 if cfg.device != "cpu" and cfg.backend == "pt" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), actors * 4)).map_batches(
            Annotator,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=batch_size,
            concurrency=actors,
            num_cpus=1,
            num_gpus=gpus,
            batch_format="numpy",
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield {key: list(values) for key, values in batch.items()}
    finally:
        context.execution_options.preserve_order = saved


def start_run(cfg: PredictConfig) -> tuple[PredictConfig, Any, float]:
    """The checked config with absolute paths, the model's metadata, and the start time; DIR created."""
    # Relative paths resolve once, here: actors on other nodes or folders see the same absolute paths.
    source = cfg.source if is_stream(cfg.source) else resolve_path(cfg.source)
    cfg = replace(cfg, source=source, out=resolve_path(cfg.out)).validate()
    # A missing model fails here, once, clearly.
    info = resolve_model(cfg.model_uri, backend=cfg.backend, tracking_uri=cfg.tracking_uri)
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    return cfg, info, started


def predict(cfg: PredictConfig) -> PredictResult:
    """Annotate every image of a folder, or every frame of a video; write DIR as the module says.

    A camera index or stream URL goes to `facemask.video.streams.predict_stream` instead.
    """
    if is_stream(cfg.source):
        raise ConfigError(f"{cfg.source}: a camera or stream; run it with facemask.video.streams.predict_stream")
    if cfg.engine == "auto":  # a library never starts Ray: only a cluster already connected counts
        cfg = replace(cfg, engine="ray" if cluster_connected() else "local")
    cfg, info, started = start_run(cfg)
    jsonl = cfg.out / "detections.jsonl"
    totals = {name: 0 for name in CLASS_NAMES}
    skipped: list[dict[str, str]] = []
    items, people = 0, None
    if cfg.source.is_dir():
        rows = list_images(cfg.source)
        if not rows:
            raise ConfigError(f"{cfg.source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        kind, annotated = "images", cfg.out / "annotated"
        with jsonl.open("w") as f:
            for batch in run_batches(cfg, rows, cfg.batch_size):
                for line in batch["record"]:
                    f.write(line + "\n")
                    entry = json.loads(line)
                    items += 1
                    if "error" in entry:
                        skipped.append({"file": entry["source"], "reason": entry["error"]})
                        continue
                    for name, n in entry["counts"].items():
                        totals[name] += n
    else:
        import cv2

        rows, fps, size = frame_ranges(cfg.source, cfg.frames_per_task)
        kind, annotated = "video", cfg.out / "annotated.mp4"
        writer = cv2.VideoWriter(str(annotated), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        # Frames come back in order, so one tracker here follows each face across the actors' chunks.
        tracker = PeopleTracker(frame_rate=fps)
        try:
            with jsonl.open("w") as f:
                for batch in run_batches(cfg, rows, 1):
                    for line, jpeg in zip(batch["record"], batch["jpeg"]):
                        entry = json.loads(line)
                        # The video's own clock: the tracker's rate is the file's, however fast it is read.
                        found = tracker.update(entry["detections"], at=entry["time_s"])
                        entry = record(found, {k: entry[k] for k in ("frame", "time_s")})
                        f.write(json.dumps(entry) + "\n")
                        frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                        writer.write(frame)
                        items += 1
                        for name, n in entry["counts"].items():
                            totals[name] += n
        finally:
            writer.release()
        people = tracker.summary()
    for problem in skipped:
        log.warning("skipped %s: %s", problem["file"], problem["reason"])
    counts = {"items": items, "detections": totals, "skipped": skipped, "people": people}
    return finish(cfg, info, started, kind=kind, jsonl=jsonl, annotated=annotated, **counts)


def finish(cfg: PredictConfig, info, started: float, **fields) -> PredictResult:
    """The run's result with its time and model, written to DIR/summary.json too."""
    result = PredictResult(**fields, seconds=round(time.perf_counter() - started, 2), model=info.summary(cfg.backend))
    (cfg.out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result

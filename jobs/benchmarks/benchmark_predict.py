"""Benchmark: images/s of `facemask predict` against a plain single-process loop, in one run.

The plain loop is what a user writes without Ray: load the model once, then for each
batch of images open them, call `Detector.predict`, draw the boxes, save the annotated
JPEG and write a JSON line; torch uses every core. `facemask predict` runs as typed, in a
fresh process, with `--engine local` (that same loop inside the command) and `--engine
ray` (one Ray Data actor per CPU, one torch thread each, a local cluster started and
stopped by the command), and once more against a Ray head this benchmark started (as
under `ray job submit`). Each row gives the whole process's wall time and the time
inside the work itself (model loaded, cluster up), and every run's detections are
compared with the plain loop's, image by image.

    python jobs/benchmarks/benchmark_predict.py [--images data/kaggle/images]
        [--model-uri PATH.pt|models:/...] [--imgsz 640] [--conf 0.01] [--batch-size 8]

Without --model-uri it builds an untrained yolo26n with our three classes (YOLO26 has no
NMS, so its cost does not depend on what it finds); --conf 0.01 keeps enough boxes to
compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_prepare import ray_head
from benchmark_serve import untrained_weights

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "data" / "kaggle" / "images"  # the set `facemask data fetch --out data/kaggle` downloads

PLAIN = r"""
import json, sys, time
from pathlib import Path
from PIL import Image
from facemask.video.batch import annotate, record
from facemask.detection.detector import load_detector, upright_rgb
from facemask.core.settings import IMAGE_SUFFIXES
from facemask.tracking import default_tracking_uri
model, folder, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
imgsz, conf, batch = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
detector = load_detector(model, warm=True, tracking_uri=default_tracking_uri())
paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
(out / "annotated").mkdir(parents=True)
started = time.perf_counter()
with (out / "detections.jsonl").open("w") as f:
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        images = []
        for p in chunk:
            with Image.open(p) as image:
                images.append(upright_rgb(image))
        for p, image, found in zip(chunk, images, detector.predict(images, conf=conf, imgsz=imgsz)):
            found = [d.to_dict() for d in found]
            annotate(image, found).save(out / "annotated" / f"{p.stem}.jpg", quality=90)
            f.write(json.dumps(record(found, {"source": p.name, "width": image.width, "height": image.height})) + "\n")
print(f"WORK {time.perf_counter() - started:.3f} {len(paths)}")
"""


def run(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{command[:6]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def detections(out: Path) -> dict[str, list]:
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    return {Path(r["source"]).name: r.get("detections", r.get("error")) for r in lines}


def compare(want: dict[str, list], got: dict[str, list]) -> str:
    """'identical', or how far apart: boxes count, labels, largest box and confidence gaps."""
    if want == got:
        return "identical"
    if want.keys() != got.keys():
        return f"different images ({len(want)} vs {len(got)})"
    box_gap = conf_gap = 0.0
    for name, expected in want.items():
        found = got[name]
        if len(found) != len(expected) or [d["label"] for d in found] != [d["label"] for d in expected]:
            return f"different detections in {name}"
        for a, b in zip(expected, found):
            box_gap = max(box_gap, *(abs(a["box"][k] - b["box"][k]) for k in a["box"]))
            conf_gap = max(conf_gap, abs(a["confidence"] - b["confidence"]))
    return f"same boxes and labels; box within {box_gap:.1f} px, confidence within {conf_gap:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REAL)
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--conf", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"{args.images}: no such folder; pass --images DIR with 500 or more images")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model_uri or str(untrained_weights(tmp))
        common = [
            "--model-uri",
            model,
            "--imgsz",
            str(args.imgsz),
            "--conf",
            str(args.conf),
            "--batch-size",
            str(args.batch_size),
        ]
        facemask = [sys.executable, "-c", "from facemask.cli import main; main()", "predict", str(args.images)]
        rows = {}
        seconds, stdout = run(
            [
                sys.executable,
                "-c",
                PLAIN,
                model,
                str(args.images),
                str(tmp / "plain"),
                str(args.imgsz),
                str(args.conf),
                str(args.batch_size),
            ]
        )
        work, count = next(line.split()[1:] for line in stdout.splitlines() if line.startswith("WORK "))
        rows["plain loop"] = (seconds, float(work), tmp / "plain")
        for engine in ("local", "ray"):
            out = tmp / engine
            seconds, _ = run([*facemask, "--out", str(out), "--engine", engine, *common])
            rows[f"facemask predict --engine {engine}"] = (
                seconds,
                json.loads((out / "summary.json").read_text())["seconds"],
                out,
            )
        with ray_head(tmp) as env:
            out = tmp / "cluster"
            seconds, _ = run([*facemask, "--out", str(out), "--engine", "ray", *common], env=env)
            rows["... --engine ray, on a running cluster"] = (
                seconds,
                json.loads((out / "summary.json").read_text())["seconds"],
                out,
            )
        want = detections(tmp / "plain")
        n = int(count)
        print(
            f"{n} images from {args.images}; model {args.model_uri or 'untrained yolo26n'}; imgsz {args.imgsz}; "
            f"batch {args.batch_size}; CPU"
        )
        print(
            f"{'path':40s} {'whole s':>8s} {'images/s':>9s} {'work s':>7s} {'images/s':>9s} "
            f"{'vs plain':>9s}  detections vs plain"
        )
        base_whole, base_work = rows["plain loop"][0], rows["plain loop"][1]
        for name, (whole, work, out) in rows.items():
            print(
                f"{name:40s} {whole:8.1f} {n / whole:9.1f} {work:7.1f} {n / work:9.1f} "
                f"{base_whole / whole:8.2f}x  {compare(want, detections(out))}"
            )
        ray_whole = rows["facemask predict --engine ray"][0]
        print(
            f"\ntarget: facemask predict (ray) at least 1.20x the plain loop, whole process: "
            f"{base_whole / ray_whole:.2f}x ({'met' if base_whole / ray_whole >= 1.2 else 'MISSED'}); "
            f"work only: {base_work / rows['facemask predict --engine ray'][1]:.2f}x"
        )


if __name__ == "__main__":
    main()

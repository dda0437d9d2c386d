"""The demo: the whole flow on generated data, offline, on a local Ray cluster.

    python jobs/demo.py [--out demo] [--source DIR] [--images N]

Steps: synthesise a dataset (unless --source), prepare it with Ray Data.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import init_ray  # noqa: E402
from facemask.pipeline import PrepareConfig, prepare  # noqa: E402
from facemask.synth import synthesize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--source", type=Path, help="A VOC dataset (Kaggle layout) instead of generated data.")
    parser.add_argument("--images", type=int, default=160, help="Generated images when no --source.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    source = args.source
    if source is None:
        source = args.out / "raw"
        counts = synthesize(source, images=args.images, seed=args.seed)
        print(f"[1] generated {args.images} images in {source}: {counts}")
    init_ray()
    result = prepare(PrepareConfig(source=source, out=args.out / "yolo", engine="ray", seed=args.seed))
    counts = {k: v["images"] for k, v in result.manifest["counts"].items()}
    print(f"[2] prepared with Ray Data: {result.data_yaml}  images {counts}")
    print(f"    class balance: {args.out / 'yolo' / 'class_distribution.png'}")
    print(f"    synthetic samples: {args.out / 'yolo' / 'synthetic_samples.jpg'}")
    print(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()

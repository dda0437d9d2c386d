"""Benchmark: one trained model's test-time levers and its operating point, on a prepared
dataset's held-out images, scored as Ultralytics 8.4's validator scores (matching in confidence
order; `tests/unit/quality/test_scoring_reference.py`).

- Levers, each against the same model without it, paired on the test split, with its cost in
  milliseconds per image: test-time augmentation; scoring at `--large-imgsz`; with `--members`,
  the weighted-box fusion of the model and those models (`facemask ensemble`'s fusion) against
  the model alone.
- The operating point (`facemask calibrate`'s choice on val: the size, one threshold per class)
  against the answer every version gave before one was stored (0.25 for every class, at
  `--serve-imgsz`): precision, recall and the people-count error per image on test, paired.

The same functions score the tuner benchmark's retrained models (benchmark_tuners.py); this one
takes any model, such as the README's hour recipe:

    python jobs/benchmarks/benchmark_operating_point.py --model runs/train/cpu-recipe/weights/best.pt \
        --data data/real/data.yaml --imgsz 320
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark_tuners import lever_lines, operating_point, point_lines, test_time_levers  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="weights (.pt) or models:/NAME/N")
    parser.add_argument("--data", type=Path, required=True, help="a prepared data.yaml: val chooses, test scores")
    parser.add_argument("--members", default="", help="more models to fuse with --model, comma-separated")
    parser.add_argument("--imgsz", type=int, default=320, help="the size the model was trained at")
    parser.add_argument("--large-imgsz", type=int, default=416, help="the larger scoring size (a lever)")
    parser.add_argument("--serve-imgsz", type=int, default=640, help="the size versions answered at before")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    args.test_data = args.data
    return args


def main(argv: list[str] | None = None) -> dict:
    from facemask.core.runtime import configure_runtime

    args = parse(argv)
    configure_runtime()
    members = [args.model] + [m for m in args.members.split(",") if m]
    levers = test_time_levers(args.model, members if len(members) > 1 else [], args)
    op = operating_point(args.model, args)
    print("\n".join(["", f"test-time levers on {args.model} (paired, test split):", *lever_lines(levers), ""]))
    print("\n".join(point_lines(op, args)))
    figures = {
        "model": args.model,
        "levers": {name: {**row, "difference": row["difference"].to_dict()} for name, row in levers.items()},
        "operating_point": json.loads(op["point"].to_tag()),
        "val_mAP50_by_size": op["val_mAP50_by_size"],
        "chosen": op["chosen"],
        "today": op["today"],
        "mae_difference": {name: str(value) for name, value in op["mae_difference"].items()},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1, default=str))
    return figures


if __name__ == "__main__":
    main()

"""Benchmark: the training loop against its limit, in training images per second.

- The limit: yolo26n's bare forward, backward and optimizer step on one real batch already in
  the device's memory (the same image size and batch; AMP on a GPU, as the trainer uses it).
  Nothing can train faster than that on this device.
- The loop: Ultralytics' trainer on the same data with the project's sizing (`train.size_threads`:
  torch's threads = the CPUs this process was given; on a GPU the dataloader's workers at most
  that), once per variant of dataloader workers and image cache. Each epoch is timed from its
  start to its end; epochs after the first are averaged (the first pays for worker start-up,
  caching and the device's warm-up). The run stops at the last epoch's end: no validation or
  checkpoint is timed (and Ultralytics' checkpoint needs polars, which a bare GPU machine lacks).
  The start-up before the first epoch (building the model and the dataloader, caching) is
  reported apart.

On a GPU the question is whether the dataloader (decoding and mosaic on the CPU) keeps the card
fed; on a CPU, whether the loop uses every core it was given.

    python jobs/benchmarks/benchmark_train_limit.py --data data/real/data.yaml --device cpu --imgsz 320 --batch 16
    python jobs/benchmarks/benchmark_train_limit.py --data data/real/data.yaml --device 0 --imgsz 640 --batch 32 \
        --workers 0,2,8 --cache none,ram --epochs 3

Needs torch and Ultralytics only (no Ray, no MLflow), so it runs on a bare GPU machine with the
repository on PYTHONPATH (jobs/benchmarks/gpu_figures.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared YOLO data.yaml (facemask data prepare)")
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="per variant; epochs after the first are timed")
    parser.add_argument("--workers", default="0", help="dataloader workers to try, comma-separated (a GPU's)")
    parser.add_argument("--cache", default="none", help="image caches to try, comma-separated: none, ram")
    parser.add_argument("--limit-steps", type=int, default=10, help="timed steps of the bare limit")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    return parser.parse_args(argv)


def card(device: str) -> str:
    import torch

    from facemask.core.runtime import cpus_given

    if device == "cpu":
        return f"CPU, {cpus_given()} cores given"
    return f"{torch.cuda.get_device_name(int(device))}, {cpus_given()} CPU cores given"


def synchronize(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize(int(device))


def one_batch(data_yaml: Path, imgsz: int, batch: int, device: str) -> tuple:
    """One training batch as the trainer makes it (mosaic and all), moved to the device and scaled."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "data": str(data_yaml)})
    data = check_det_dataset(str(data_yaml))
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train", stride=32)
    target = torch.device("cpu" if device == "cpu" else f"cuda:{device}")
    loaded = next(iter(build_dataloader(dataset, batch, workers=0, shuffle=True, device=target)))
    moved = {key: value.to(target) if isinstance(value, torch.Tensor) else value for key, value in loaded.items()}
    moved["img"] = moved["img"].float() / 255
    return cfg, data, moved, target


def limit(data_yaml: Path, imgsz: int, batch: int, device: str, steps: int) -> dict:
    """Images per second of the bare forward, backward and SGD step on one batch held on the device."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from facemask.core.runtime import cpus_given

    torch.set_num_threads(cpus_given())
    cfg, data, held, target = one_batch(data_yaml, imgsz, batch, device)
    model = DetectionModel("yolo26n.yaml", nc=len(data["names"]), verbose=False).to(target)
    model.args = cfg  # the loss's gains (box, cls, dfl)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = target.type == "cuda"
    scaler = torch.amp.GradScaler(target.type, enabled=amp)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=target.type, enabled=amp):
            loss, _ = model.loss(held)
        scaler.scale(loss.sum()).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):  # warm-up: allocator, cuDNN's algorithm search
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": round(batch * steps / seconds, 1), "s_per_batch": round(seconds / steps, 4), "amp": amp}


def loop(args: argparse.Namespace, workers: int, cache: str, project: Path) -> dict:
    """Images per second of Ultralytics' training epochs with the project's sizing, and the rest's share."""
    from ultralytics import YOLO

    from facemask.training.train import size_threads, strip_integrations

    seen: dict = {"starts": [], "ends": []}

    def started(trainer) -> None:
        seen["starts"].append(time.perf_counter())
        seen["images"] = len(trainer.train_loader.dataset)
        seen["workers"] = trainer.args.workers

    def ended(trainer) -> None:
        seen["ends"].append(time.perf_counter())
        if len(seen["ends"]) == args.epochs:
            raise LastEpochTimed

    model = YOLO("yolo26n.yaml")
    model.add_callback("on_pretrain_routine_start", size_threads)
    model.add_callback("on_pretrain_routine_start", strip_integrations)  # no MLflow or other logger's time
    model.add_callback("on_train_epoch_start", started)
    model.add_callback("on_train_epoch_end", ended)
    begin = time.perf_counter()
    try:
        model.train(
            data=str(args.data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device,
            workers=workers, cache=False if cache == "none" else cache, val=False, save=False, plots=False,
            seed=0, project=str(project), name=f"w{workers}-{cache}", exist_ok=True, verbose=False,
        )  # fmt: skip
    except LastEpochTimed:
        pass
    epochs = [end - start for start, end in zip(seen["starts"], seen["ends"])]
    timed = epochs[1:] or epochs
    per_epoch = sum(timed) / len(timed)
    return {
        "workers": workers,
        "workers_used": seen.get("workers"),
        "cache": cache,
        "images": seen.get("images"),
        "epoch_s": round(per_epoch, 2),
        "images_per_s": round(seen.get("images", 0) / per_epoch, 1),
        "startup_s": round(seen["starts"][0] - begin, 1),
    }


class LastEpochTimed(Exception):
    """Raised from the last epoch's end: the benchmark has its figures and skips the final checkpoint."""


def table(figures: dict) -> str:
    bare = figures["limit"]["images_per_s"]
    lines = [
        f"card: {figures['card']}; yolo26n at {figures['imgsz']}, batch {figures['batch']}",
        f"limit (bare step, data on the device): {bare:.1f} images/s ({figures['limit']['s_per_batch']} s a batch)",
        "| workers (asked → used) | cache | images/s | of the limit | start-up s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in figures["loops"]:
        share = row["images_per_s"] / bare if bare else float("nan")
        lines.append(
            f"| {row['workers']} → {row['workers_used']} | {row['cache']} | {row['images_per_s']:.1f} | "
            f"{share:.2f}× | {row['startup_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    figures = {"card": card(args.device), "imgsz": args.imgsz, "batch": args.batch, "epochs": args.epochs}
    figures["limit"] = limit(args.data, args.imgsz, args.batch, args.device, args.limit_steps)
    figures["loops"] = []
    with tempfile.TemporaryDirectory(prefix="train-limit-") as project:
        for cache in args.cache.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                try:
                    figures["loops"].append(loop(args, workers, cache, Path(project)))
                except Exception as exc:  # one variant's failure (a worker's shared memory) is a figure too
                    figures.setdefault("failed", []).append({"workers": workers, "cache": cache, "error": repr(exc)})
                print(json.dumps((figures["loops"] + figures.get("failed", []))[-1]), flush=True)
                write(args.out, figures)
    print(table(figures))
    for failure in figures.get("failed", []):
        print(f"failed: workers {failure['workers']}, cache {failure['cache']}: {failure['error']}")
    return figures


def write(out: Path | None, figures: dict) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: the training loop against its limit, in training images per second.

- The limit: yolo26n's bare forward, backward and optimizer step on one real batch already in
  the device's memory (the same image size and batch; AMP on a GPU, as the trainer uses it).
  Nothing can train faster than that on this device.
- The loop: Ultralytics' trainer on the same data with the project's sizing (`train.size_threads`:
  torch's threads = the CPUs this process was given; on a GPU the dataloader's workers at most
  that), once per variant of torch threads, dataloader workers and image cache. Mosaic stays on
  in every timed epoch (`close_mosaic=0`), as in most of a recipe's epochs, and the limit's batch
  is a mosaic batch too. Each epoch is timed from its start to its end; epochs after the first
  are averaged (the first pays for worker start-up, caching and the device's warm-up). The run
  stops at the last epoch's end: no validation or checkpoint is timed (and Ultralytics'
  checkpoint needs polars, which a bare GPU machine lacks). The start-up before the first epoch
  (building the model and the dataloader, caching) is reported apart, and so are the cores the
  whole machine kept busy over the timed epochs (/proc/stat).
  With `--batches N` the loop is timed over N batches after a few of warm-up instead (their
  loading and augmentation included): the steady rate, minutes sooner on a CPU.
- The limit is measured before the loops and again after them, and their mean is the figure: a
  machine whose speed drifts over the run shows as two readings apart.

On a GPU the question is whether the dataloader (decoding and mosaic on the CPU) keeps the card
fed; on a CPU, whether the loop uses every core it was given. `--threads 1,given` sets the
product beside Ultralytics' own CPU default (cores - 1 threads: one on 2 cores). On a CPU,
Ultralytics loads data in the training process (workers 0); `--workers 0,1` tries a loader
process beside it.

    python jobs/benchmarks/benchmark_train_limit.py --data data/real/data.yaml --device cpu --imgsz 320 --batch 16 \
        --threads 1,given --workers 0,1 --batches 24
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
    parser.add_argument(
        "--batches", type=int, default=0, help="time this many batches after a few of warm-up instead of whole epochs"
    )
    parser.add_argument("--workers", default="0", help="dataloader workers to try, comma-separated")
    parser.add_argument(
        "--threads", default="given", help="torch threads to try, comma-separated: numbers or `given` (the CPUs given)"
    )
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


def limit(data_yaml: Path, imgsz: int, batch: int, device: str, steps: int, threads: int) -> dict:
    """Images per second of the bare forward, backward and SGD step on one batch held on the device."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.set_num_threads(threads)
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


def loop(args: argparse.Namespace, threads: int, workers: int, cache: str, project: Path) -> dict:
    """Images per second of Ultralytics' training epochs with the project's sizing, and the cores kept busy."""
    import torch
    from ultralytics import YOLO

    from facemask.core.runtime import machine_busy_s
    from facemask.training.train import size_threads, strip_integrations

    seen: dict = {"starts": [], "ends": [], "busy": []}

    def sized(trainer) -> None:
        size_threads(trainer)  # the product's sizing, then the variant's threads (the same unless asked)
        torch.set_num_threads(threads)
        if trainer.device.type == "cpu":  # Ultralytics zeroes a CPU's workers before this callback
            trainer.args.workers = workers

    def started(trainer) -> None:
        seen["starts"].append(time.perf_counter())
        seen["busy"].append(machine_busy_s())
        seen["images"] = len(trainer.train_loader.dataset)
        seen["workers"] = trainer.args.workers
        seen["threads"] = torch.get_num_threads()

    def ended(trainer) -> None:
        seen["ends"].append(time.perf_counter())
        seen["busy"].append(machine_busy_s())
        if len(seen["ends"]) == args.epochs:
            raise LastEpochTimed

    def batch_ended(trainer) -> None:
        """--batches: the clock starts after WARM_BATCHES and stops N batches later (loading included)."""
        seen["batches"] = seen.get("batches", 0) + 1
        if seen["batches"] in (WARM_BATCHES, WARM_BATCHES + args.batches):
            seen.setdefault("marks", []).append((time.perf_counter(), machine_busy_s()))
        if seen["batches"] == WARM_BATCHES + args.batches:
            raise LastEpochTimed

    model = YOLO("yolo26n.yaml")
    model.add_callback("on_pretrain_routine_start", sized)
    model.add_callback("on_pretrain_routine_start", strip_integrations)  # no MLflow or other logger's time
    model.add_callback("on_train_epoch_start", started)
    model.add_callback("on_train_epoch_end", ended)
    if args.batches:
        model.add_callback("on_train_batch_end", batch_ended)
    begin = time.perf_counter()
    try:
        model.train(
            data=str(args.data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device,
            workers=workers, cache=False if cache == "none" else cache, val=False, save=False, plots=False,
            close_mosaic=0, seed=0, project=str(project), name=f"t{threads}-w{workers}-{cache}", exist_ok=True,
            verbose=False,
        )  # fmt: skip
    except LastEpochTimed:
        pass
    row = {"threads": seen.get("threads"), "workers": workers, "workers_used": seen.get("workers"), "cache": cache}
    row |= {"images": seen.get("images"), "startup_s": round(seen["starts"][0] - begin, 1)}
    if args.batches:
        (t0, busy0), (t1, busy1) = seen["marks"]
        row |= {"epoch_s": None, "images_per_s": round(args.batches * args.batch / (t1 - t0), 1)}
        return row | {
            "s_per_batch": round((t1 - t0) / args.batches, 3),
            "cores_busy": round((busy1 - busy0) / (t1 - t0), 2),
        }
    epochs = [end - start for start, end in zip(seen["starts"], seen["ends"])]
    timed = epochs[1:] or epochs
    per_epoch = sum(timed) / len(timed)
    first = 2 if len(epochs) > 1 else 0  # the busy readings at the first timed epoch's start, and the last end
    busy = (seen["busy"][-1] - seen["busy"][first]) / sum(timed)
    row |= {"epoch_s": round(per_epoch, 2), "images_per_s": round(seen.get("images", 0) / per_epoch, 1)}
    return row | {"cores_busy": round(busy, 2)}


WARM_BATCHES = 4  # --batches: the allocator's, the loader's and the threads' first steps are not timed


class LastEpochTimed(Exception):
    """Raised from the last epoch's end: the benchmark has its figures and skips the final checkpoint."""


def table(figures: dict) -> str:
    """The loops against the limit with every core given (the machine's limit); the other limits beside it."""
    limits = figures["limits"]
    bare = limits[str(figures["cores_given"])]["images_per_s"] if str(figures["cores_given"]) in limits else None
    lines = [f"card: {figures['card']}; yolo26n at {figures['imgsz']}, batch {figures['batch']}"]
    for threads, one in limits.items():
        lines.append(
            f"limit with {threads} torch thread(s) (bare step, data on the device): {one['images_per_s']:.1f} images/s "
            f"(before the loops {one['before']['images_per_s']}, after {one['after']['images_per_s']}; "
            f"{one['s_per_batch']} s a batch)"
        )
    lines += [
        "| torch threads | workers (asked → used) | cache | images/s | of the limit, every core | cores busy "
        "| start-up s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in figures["loops"]:
        share = row["images_per_s"] / bare if bare else float("nan")
        lines.append(
            f"| {row['threads']} | {row['workers']} → {row['workers_used']} | {row['cache']} | "
            f"{row['images_per_s']:.1f} | {share:.2f}× | {row['cores_busy']:.2f} | {row['startup_s']} |"
        )
    return "\n".join(lines)


def thread_counts(spec: str) -> list[int]:
    from facemask.core.runtime import cpus_given

    return [cpus_given() if part.strip() == "given" else int(part) for part in spec.split(",")]


def measured_limits(args: argparse.Namespace, threads: list[int], figures: dict, when: str) -> None:
    """The limit at each thread count, recorded as `when` ("before" or "after"); the mean once both are in."""
    for count in threads:
        one = figures["limits"].setdefault(str(count), {})
        one[when] = limit(args.data, args.imgsz, args.batch, args.device, args.limit_steps, count)
        if "before" in one and "after" in one:
            seconds = (one["before"]["s_per_batch"] + one["after"]["s_per_batch"]) / 2
            one.update(s_per_batch=round(seconds, 4), images_per_s=round(args.batch / seconds, 1))


def main(argv: list[str] | None = None) -> dict:
    from facemask.core.runtime import cpus_given

    args = parse(argv)
    threads = thread_counts(args.threads)
    figures = {"card": card(args.device), "imgsz": args.imgsz, "batch": args.batch, "epochs": args.epochs}
    figures.update(cores_given=cpus_given(), limits={}, loops=[])
    measured_limits(args, sorted(set(threads) | {cpus_given()}), figures, "before")
    with tempfile.TemporaryDirectory(prefix="train-limit-") as project:
        for count in threads:
            for cache in args.cache.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    try:
                        figures["loops"].append(loop(args, count, workers, cache, Path(project)))
                    except Exception as exc:  # one variant's failure (a worker's shared memory) is a figure too
                        failure = {"threads": count, "workers": workers, "cache": cache, "error": repr(exc)}
                        figures.setdefault("failed", []).append(failure)
                    print(json.dumps((figures["loops"] + figures.get("failed", []))[-1]), flush=True)
                    write(args.out, figures)
    measured_limits(args, sorted(set(threads) | {cpus_given()}), figures, "after")
    write(args.out, figures)
    print(table(figures))
    for failure in figures.get("failed", []):
        print(f"failed: threads {failure['threads']}, workers {failure['workers']}, cache {failure['cache']}: "
              f"{failure['error']}")  # fmt: skip
    return figures


def write(out: Path | None, figures: dict) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

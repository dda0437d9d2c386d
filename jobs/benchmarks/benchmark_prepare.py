"""Benchmark: `facemask data prepare` with each engine, at several input sizes, in one run.

Every run is the whole command in a fresh process, as a user types it (imports, a local
Ray cluster's start and stop included), with the engines alternating so that neither
gets the warmer page cache. A fourth column, `cluster`, runs `--engine auto` against a
Ray head this benchmark started beforehand (`ray start --head` on loopback, token auth),
as under `ray job submit`: no cluster to start, and Ray Data's actors stay up between runs.
The inputs are the real set (data/kaggle) and copies of it scaled 4x and 10x (each copy's files
renamed, their XML pointing at the new names). Per run:
wall seconds of the whole process; the parse and write stage seconds inside prepare;
peak memory as the PSS of the whole process tree (driver, Ray's services and workers),
sampled every 0.5 s (for `cluster`, the client process alone). It then checks the targets
and that all engines wrote the same bytes.

    python jobs/benchmarks/benchmark_prepare.py [--source data/kaggle] \
        [--scales 1,4,10] [--repeats 3]

Run `facemask -v data prepare --engine ray ...` with FACEMASK_DEBUG=1 to see Ray Data's
own per-stage stats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT / "data" / "kaggle"  # what `facemask data fetch --out data/kaggle` downloads
ENGINES = ("local", "ray", "auto", "cluster")
STAGES = re.compile(r"engine (\w+); parse ([\d.]+)s, write ([\d.]+)s")


def tree_pss(pid: int) -> int:
    """Proportional set size of a process and its descendants: shared pages counted once."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def scaled_copy(source: Path, dest: Path, times: int) -> Path:
    """`times` copies of a VOC set under new names, each annotation naming its own copy."""
    (dest / "images").mkdir(parents=True)
    (dest / "annotations").mkdir()
    for k in range(times):
        for image in (source / "images").iterdir():
            shutil.copyfile(image, dest / "images" / f"{image.stem}_x{k}{image.suffix}")
        for xml in (source / "annotations").glob("*.xml"):
            text = re.sub(
                r"<filename>(.*?)(\.\w+)?</filename>",
                lambda m: f"<filename>{m.group(1)}_x{k}{m.group(2) or ''}</filename>",
                xml.read_text(),
                count=1,
            )
            (dest / "annotations" / f"{xml.stem}_x{k}.xml").write_text(text)
    return dest


@contextlib.contextmanager
def ray_head(tmp: Path):
    """A Ray head on loopback with token auth, for the `cluster` runs; yields their environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.mkdir(parents=True, exist_ok=True)
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(os.cpu_count()),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(tmp / "ray"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while (
            subprocess.run([ray, "status", "--address", env["RAY_ADDRESS"]], env=env, capture_output=True).returncode
            != 0
        ):
            if time.monotonic() > deadline or head.poll() is not None:
                raise SystemExit("the benchmark's Ray head did not come up")
            time.sleep(1)
        yield env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def run_once(engine: str, source: Path, out: Path, env: dict | None = None) -> dict:
    """One `facemask data prepare` in a fresh process: wall seconds, stage seconds, peak PSS."""
    command = [
        sys.executable,
        "-c",
        "from facemask.cli import main; main()",
        "-v",
        "data",
        "prepare",
        "--source",
        str(source),
        "--out",
        str(out),
        "--engine",
        "auto" if engine == "cluster" else engine,
        "--no-plots",
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env if engine == "cluster" else None,
    )
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} engine failed with exit code {proc.returncode}:\n{stderr[-3000:]}")
    ran, parse, write = STAGES.search(stderr).groups()
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    return {
        "seconds": seconds,
        "parse": float(parse),
        "write": float(write),
        "ran": ran,
        "peak": peak,
        "outputs": manifest["outputs"]["sha256"],
        "images": manifest["inputs"]["annotations"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--scales", default="1,4,10", help="Input sizes, as multiples of --source.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per engine below 10x (one at 10x and above).")
    args = parser.parse_args()
    if not (args.source / "annotations").is_dir():
        raise SystemExit(f"{args.source}: no VOC dataset there; pass --source DIR (or `facemask data synth` one)")
    scales = [int(s) for s in args.scales.split(",")]
    results: dict[int, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in scales:
            source = args.source if scale == 1 else scaled_copy(args.source, Path(tmp) / f"x{scale}", scale)
            results[scale] = {e: [] for e in ENGINES}
            repeats = args.repeats if scale < 10 else 1

            def measure(engine: str, env: dict | None = None) -> None:
                # A local cluster's processes can outlive its driver by a second or two: let them go first.
                time.sleep(3)
                run = run_once(engine, source, Path(tmp) / f"out-{engine}", env)
                results[scale][engine].append(run)
                print(
                    f"  {scale}x {engine:7s} run {len(results[scale][engine])}: {run['seconds']:.1f}s "
                    f"(ran {run['ran']})",
                    flush=True,
                )

            for _ in range(repeats):
                for engine in ("local", "ray", "auto"):
                    measure(engine)
            # The head runs only for its own runs: its idle services would slow the others.
            with ray_head(Path(tmp) / f"head{scale}") as env:
                for _ in range(repeats):
                    measure("cluster", env)
            if source != args.source:
                shutil.rmtree(source)

    def med(scale: int, engine: str, key: str) -> float:
        return statistics.median(r[key] for r in results[scale][engine])

    print(f"\nsource: {args.source}; whole process, median of each engine's runs; peak = max PSS of the process tree")
    print(
        f"{'images':>7s} {'engine':>7s} {'ran':>5s} {'seconds':>8s} {'images/s':>9s} {'parse s':>8s} "
        f"{'write s':>8s} {'peak PSS':>9s}"
    )
    for scale in scales:
        for engine in ENGINES:
            runs = results[scale][engine]
            n = runs[0]["images"]
            print(
                f"{n:7d} {engine:>7s} {runs[0]['ran']:>5s} {med(scale, engine, 'seconds'):8.2f} "
                f"{n / med(scale, engine, 'seconds'):9.1f} {med(scale, engine, 'parse'):8.2f} "
                f"{med(scale, engine, 'write'):8.2f} {max(r['peak'] for r in runs) / 2**30:8.2f}G"
            )

    checks = []
    mid = 4 if 4 in scales else scales[-1]
    for stage in ("parse", "write"):
        ratio = med(mid, "local", stage) / med(mid, "ray", stage)
        checks.append((f"{stage} stage, ray vs local at {mid}x", f"{ratio:.2f}x", ">= 1.70x", ratio >= 1.7))
    ratio = med(mid, "local", "seconds") / med(mid, "ray", "seconds")
    checks.append((f"whole process, ray vs local at {mid}x", f"{ratio:.2f}x", ">= 1.30x", ratio >= 1.3))
    low = scales[0]
    fastest = min(med(low, "local", "seconds"), med(low, "ray", "seconds"))
    over = med(low, "auto", "seconds") / fastest - 1
    checks.append((f"auto vs the faster engine at {low}x", f"{over:+.1%}", "<= +5%", over <= 0.05))
    if len(scales) > 1:
        for engine in ("local", "ray"):
            growth = max(r["peak"] for r in results[scales[-1]][engine]) / max(r["peak"] for r in results[low][engine])
            checks.append((f"peak PSS {engine}, {scales[-1]}x vs {low}x", f"{growth:.2f}x", "<= 1.50x", growth <= 1.5))
    for scale in scales:
        same = len({r["outputs"] for e in ENGINES for r in results[scale][e]}) == 1
        checks.append((f"identical outputs across engines at {scale}x", str(same), "True", same))
    print(f"\n{'target':44s} {'measured':>9s} {'goal':>9s}")
    for name, measured, goal, met in checks:
        print(f"{name:44s} {measured:>9s} {goal:>9s}  {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()

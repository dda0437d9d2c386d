"""Benchmark: what the endpoint's sampling costs its callers, paired in one run.

One Serve instance holds two apps of the same model on one proxy, alike but for sampling: `/plain`
without it, `/sampled` with the rule asked for. wrk (benchmark_serve's load) alternates between
them in rounds, ABBA, so both see the machine in the same state; each round is --seconds at
--concurrency. Reported per app: requests per second, p50 and p99; then the throughput ratio
sampled / plain with its 95% interval over the rounds' paired ratios (t), and the pool's counts.

Rules:
- `decisions`: the defaults with `per_hour: 1`: every answer is decided on, and once the hour's
  one image is kept nothing more is written: the steady state of an endpoint whose hourly
  budget (120 by default) is spent, which is most of any busy hour;
- `every`: random_share 1 and no hourly limit, every answer's image written: the worst case.

    python jobs/benchmarks/benchmark_sampling_cost.py [--backend simulated-gpu|pt] [--rule decisions,every] \
        [--rounds 6] [--seconds 6] [--concurrency 16]

Needs wrk (Debian: apt-get install wrk). Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark_serve import SIMULATED, load_images, untrained_weights, wrk  # noqa: E402

RULES = {
    "decisions": {"faces": "blur", "per_hour": 1},
    "every": {"faces": "blur", "random_share": 1.0, "per_hour": 100_000},
}
# Two-sided 95% t quantiles by degrees of freedom (rounds - 1).
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=SIMULATED, help="simulated-gpu (the HTTP path alone) or pt (CPU)")
    parser.add_argument("--rule", default="decisions,every", help="comma-separated: " + ", ".join(RULES))
    parser.add_argument("--rounds", type=int, default=6, help="ABBA pairs of load runs per rule")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=32)
    return parser.parse_args(argv)


def interval(ratios: list[float]) -> tuple[float, float, float]:
    """The mean of paired ratios and its 95% t interval."""
    mean = statistics.fmean(ratios)
    if len(ratios) < 2:
        return mean, math.nan, math.nan
    half = T95.get(len(ratios) - 1, 1.96) * statistics.stdev(ratios) / math.sqrt(len(ratios))
    return mean, mean - half, mean + half


def apps(args: argparse.Namespace, rule: dict, model_uri: str, pool: Path, port: int) -> None:
    """`/plain` and `/sampled` on one Serve proxy at `port`."""
    from ray import serve

    from facemask.serving import build_app

    base = {
        "model_uri": model_uri,
        "backend": args.backend,
        "device": "cpu",
        "deployment_options": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 64},
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(base), name="plain", route_prefix="/plain")
    serve.run(build_app({**base, "sampling": rule, "samples_dir": str(pool)}), name="sampled", route_prefix="/sampled")


def rounds(args: argparse.Namespace, url: str, bodies: list[Path], work: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"plain": [], "sampled": []}
    for prefix in ("/plain", "/sampled"):  # warm each app's connections, batch path and decoder
        wrk(url, bodies, args.imgsz, args.concurrency, 2, work, prefix)
    for i in range(args.rounds):
        order = ("plain", "sampled") if i % 2 == 0 else ("sampled", "plain")  # ABBA
        for name in order:
            runs[name].append(wrk(url, bodies, args.imgsz, args.concurrency, args.seconds, work, f"/{name}"))
    return runs


def pool_files(pool: Path) -> int:
    return sum(1 for _ in pool.rglob("*.jpg")) if pool.is_dir() else 0


def main(argv: list[str] | None = None) -> dict:
    import ray

    from facemask.core.runtime import configure_runtime, free_port, init_ray

    args = parse(argv)
    configure_runtime()
    work = Path(tempfile.mkdtemp(prefix="facemask-bench-sampling-"))
    bodies = []
    for i, data in enumerate(load_images(args.images, work)):
        (work / f"photo{i}.jpg").write_bytes(data)
        bodies.append(work / f"photo{i}.jpg")
    model_uri = SIMULATED if args.backend == SIMULATED else str(untrained_weights(work))
    init_ray(serving=True, ingress="proxy")
    figures = {}
    try:
        from ray import serve

        for name in args.rule.split(","):
            pool, port = work / f"pool-{name}", free_port()
            apps(args, RULES[name], model_uri, pool, port)
            runs = rounds(args, f"http://127.0.0.1:{port}", bodies, work)
            ratios = [s["rps"] / p["rps"] for p, s in zip(runs["plain"], runs["sampled"])]
            figures[name] = {"runs": runs, "ratio": interval(ratios), "written": pool_files(pool)}
            serve.shutdown()
    finally:
        ray.shutdown()
    print(f"{args.backend}, c={args.concurrency}, {args.rounds} ABBA rounds of {args.seconds:g} s per app and rule")
    print("| rule | app | req/s (mean of rounds) | p50 ms | p99 ms | failed | images written |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, one in figures.items():
        for app in ("plain", "sampled"):
            runs = one["runs"][app]
            rps = statistics.fmean(r["rps"] for r in runs)
            p50, p99 = statistics.median(r["p50"] for r in runs), statistics.median(r["p99"] for r in runs)
            written = one["written"] if app == "sampled" else 0
            failed = sum(r["failed"] + r["socket_errors"] for r in runs)
            print(f"| {name} | {app} | {rps:.1f} | {p50:.1f} | {p99:.1f} | {failed} | {written} |")
    for name, one in figures.items():
        mean, low, high = one["ratio"]
        print(f"{name}: throughput sampled/plain {mean:.3f} [{low:.3f}, {high:.3f}] (target >= 0.98)")
    return figures


if __name__ == "__main__":
    main()

"""`facemask watch`: many cameras at once, compliance per camera over time (docs/cameras.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from facemask.cli.base import JSON_OPTION, config_options, emit, main, results_footer, stop_summary
from facemask.core.lifecycle import stop_exit_code
from facemask.core.runtime import configure_runtime, init_ray
from facemask.core.settings import WatchConfig


@main.command("watch")
@click.argument("cameras", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for compliance.jsonl, summary.json."
)
@config_options(
    WatchConfig,
    ("--model-uri", "model_uri", {}),
    ("--backend", "backend", {"type": click.Choice(["pt", "onnx", "simulated-gpu"])}),
    ("--simulated-latency", "simulated_latency", {"help": "simulated-gpu: BATCH:MS call times."}),
    ("--device", "device", {}),
    ("--conf", "conf", {"help": "Faces under this confidence are not shown or counted (tracking uses weaker)."}),
    ("--imgsz", "imgsz", {"help": "Frames are shrunk to this long side by their reader, then detected at it."}),
    ("--max-batch", "max_batch", {"help": "Frames per model call, across cameras."}),
    ("--window-s", "window_s", {"help": "One compliance row per camera per window of this many seconds."}),
    ("--history-minutes", "history_minutes", {"help": "How much compliance history the page shows."}),
    ("--host", "host", {}),
    ("--port", "port", {"type": int, "help": "The camera grid page and control API; 0 picks a free port."}),
    (
        "--api-sources",
        "api_sources",
        {"help": "What a camera added over the API may be: rtsp, rtsps, rtmp, http, https, file, device."},
    ),
    ("--api-hosts", "api_hosts", {"help": "Hosts or networks (10.0.0.0/8) a camera added over the API may be on."}),
    ("--page-timeout-s", "page_timeout_s", {"help": "A silent connection to the page or API is closed after this."}),
    ("--reader-cpus", "reader_cpus", {"help": "Ray CPUs reserved per camera for its reading."}),
    (
        "--cameras-per-reader",
        "cameras_per_reader",
        {"help": "Cameras read by one process: one Ray call brings all their frames; 1 isolates each camera."},
    ),
    ("--detector-cpus", "detector_cpus", {}),
    ("--detector-gpus", "detector_gpus", {}),
    ("--threads", "threads", {"type": int, "help": "CPU inference threads of the detector."}),
    ("--max-seconds", "max_seconds", {"type": float, "help": "Stop after this long (default: until stopped)."}),
)
@click.option(
    "--fast-decode",
    is_flag=True,
    help="Skip H.264/HEVC deblocking when decoding: 12-26% less decoding CPU, for frames the model shrinks anyway.",
)
@click.option("--no-page", is_flag=True, help="Serve no page or control API.")
@click.option(
    "--open-api-on-loopback",
    is_flag=True,
    help="Without FACEMASK_API_KEY, let anyone on this machine add and remove cameras (loopback only).",
)
@JSON_OPTION
def watch_command(cameras, out, fast_decode, no_page, open_api_on_loopback, as_json, **kw):
    """Watch every camera in CAMERAS (a YAML list: id, url, fps, zone) until Ctrl-C, SIGTERM or
    `ray job stop`: reader processes of a few cameras each, one batched detector, people and mask compliance per
    camera per window in OUT/compliance.jsonl, and a live camera grid page. The list is read again
    when it changes; cameras can also be added with POST /cameras and removed with DELETE /cameras/ID
    (with FACEMASK_API_KEY set, or --open-api-on-loopback). An `events:` section raises violation
    events with snapshots, delivered to a webhook and MQTT (docs/cameras.md); a `sampling:` section
    keeps frames worth a label (docs/learning.md)."""
    configure_runtime()
    from facemask.tracking import default_tracking_uri
    from facemask.video.watch.cameras import check_sources, load_cameras, load_events, load_sampling

    cfg = WatchConfig(
        cameras=cameras,
        out=out,
        fast_decode=fast_decode,
        open_api_on_loopback=open_api_on_loopback,
        tracking_uri=default_tracking_uri(),
        **kw,
    )
    cfg = cfg.validate()
    # A placeholder or short key, or a bad allowlist, is refused here, before Ray starts.
    api_key = watch_api_key() if not no_page else None
    access = page_access(cfg, api_key)
    check_sources(load_cameras(cameras), cameras.parent)  # a mistake is reported before Ray starts
    load_events(cameras)  # ... and one in the events section, or a secret not set
    load_sampling(cameras)
    init_ray(torch=False, metrics=True)
    result = run_watch(cfg, page=not no_page, access=access)
    if as_json:
        emit(True, result.to_dict())
    else:
        click.echo(cameras_table(result.cameras))
        click.echo(f"{result.windows} compliance rows in {result.seconds:.0f}s")
        click.echo(results_footer(paths={"compliance": result.log, "summary": result.summary}))
    if result.stopped_by:
        click.echo(f"stopped by {result.stopped_by}: {stop_summary('watch')}", err=True)
        sys.exit(stop_exit_code())


def watch_api_key() -> str | None:
    """FACEMASK_API_KEY as the endpoint checks it: a placeholder or a short key is refused."""
    from facemask.serving.request_checks import checked_api_key

    return checked_api_key(os.environ.get("FACEMASK_API_KEY"), False, "the watch's environment")


def page_access(cfg: WatchConfig, api_key: str | None):
    """Who the control API answers, and what a camera added over it may be."""
    from facemask.video.watch.page import Access
    from facemask.video.watch.urls import parse_hosts, parse_sources

    return Access(api_key, cfg.open_api_on_loopback, parse_sources(cfg.api_sources), parse_hosts(cfg.api_hosts))


def run_watch(cfg: WatchConfig, page: bool = True, access=None):
    """The watch with its page (when asked) and metrics; returns when stopped or out of time."""
    from facemask.core.runtime import metrics_endpoints
    from facemask.video.watch.metrics import WatchMetrics
    from facemask.video.watch.page import WatchPage
    from facemask.video.watch.runner import Watch

    watch = Watch(cfg, metrics=WatchMetrics())
    click.echo(f"metrics for Prometheus: {', '.join(metrics_endpoints('none'))}  (docs/operating.md)", err=True)
    server = None
    if page and cfg.port is not None:
        access = access or page_access(cfg, None)
        server = WatchPage(watch, cfg.host, cfg.port, access, cfg.page_timeout_s)
        click.echo(f"camera grid: {server.url}  (GET /cameras, POST /cameras, PUT and DELETE /cameras/ID)", err=True)
        if access.api_key is None and not access.open_on_loopback:
            click.echo("no FACEMASK_API_KEY: cameras cannot be added or removed over HTTP", err=True)
    try:
        return watch.run()
    finally:
        if server is not None:
            server.close()


def cameras_table(cameras: dict[str, dict]) -> str:
    lines = [f"{'camera':16s} {'state':9s} {'frames':>7s} {'dropped':>7s} {'fps':>6s} {'p50 ms':>7s} {'p99 ms':>7s}"]
    for name, c in cameras.items():
        lat = c["latency_ms"]
        lines.append(
            f"{name:16s} {str(c['state']):9s} {c['processed']:7d} {c['dropped']:7d} {c['processed_fps']:6.1f} "
            f"{str(lat['p50']):>7s} {str(lat['p99']):>7s}"
        )
    return "\n".join(lines)


@main.command("report")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--period", type=click.Choice(["day", "week"]), default="day", show_default=True)
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day to include (YYYY-MM-DD).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day to include (YYYY-MM-DD).")
@click.option("--utc", is_flag=True, help="Days in UTC, not the machine's local time.")
@click.option("--to", "to", type=click.Path(path_type=Path), help="Folder for report.csv and report.html [OUT].")
@JSON_OPTION
def report_command(out, period, since, until, utc, to, as_json):
    """A daily or weekly mask compliance report per camera from a watch's OUT folder
    (compliance.jsonl, events.jsonl): report.csv and a self-contained report.html with charts."""
    from facemask.events.report import build_report

    report = build_report(out, period, since.date() if since else None, until.date() if until else None, utc)
    paths = report.write(to or out)
    if as_json:
        emit(True, {"rows": report.rows, "skipped": report.skipped, "files": {k: str(v) for k, v in paths.items()}})
        return
    for row in report.rows:
        share = "–" if row["compliance"] is None else f"{row['compliance']:.0%}"
        click.echo(
            f"{row['period']:10s} {row['camera']:16s} {row['people']:6d} people  {share:>5s}  {row['events']} events"
        )
    for name, count in report.skipped.items():
        click.echo(f"warning: {count} lines of {name} were not rows and were skipped", err=True)
    click.echo(results_footer(paths=paths))


@main.group("pool")
def pool_group():
    """The frames a watch kept for labelling (its camera list's `sampling:` section)."""


@pool_group.command("export")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Path(path_type=Path), required=True, help="Folder for the labelling task.")
@click.option("--format", "fmt", type=click.Choice(["voc", "label-studio"]), default="voc", show_default=True)
@click.option(
    "--url-prefix",
    default="/data/local-files/?d=",
    show_default=True,
    help="label-studio: what goes before images/NAME in each task's image URL.",
)
@JSON_OPTION
def pool_export_command(pool, to, fmt, url_prefix, as_json):
    """Export POOL (a watch's OUT/samples) as a labelling task with the model's boxes as
    pre-labels: Pascal VOC (CVAT; read back by `facemask data prepare --format voc`) or Label
    Studio tasks with predictions."""
    from facemask.learning.export import export_pool

    result = export_pool(pool, to, fmt, url_prefix)
    if result["skipped_without_sidecar"]:
        click.echo(f"warning: {result['skipped_without_sidecar']} images had no labels file and were skipped", err=True)
    emit(as_json, result, f"{result['exported']} samples exported as {fmt} to {to}")

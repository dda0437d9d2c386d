"""`facemask serve` and `facemask query`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from facemask.cli.base import (
    JSON_OPTION,
    ServerFailure,
    config_options,
    emit,
    hidden_alias,
    main,
)
from facemask.core.errors import ConfigError, EndpointError
from facemask.core.runtime import configure_runtime, init_ray
from facemask.core.settings import (
    ServeConfig,
)
from facemask.serving.client import DEADLINE_S


@main.command("serve")
@config_options(
    ServeConfig,
    (
        "--model-uri",
        "model_uri",
        {"help": "models:/NAME@ALIAS, models:/NAME/N, runs:/..., or a local .pt/.onnx (air-gapped)."},
    ),
    (
        "--backend",
        "backend",
        {
            "type": click.Choice(["pt", "onnx", "simulated-gpu"]),
            "help": "pt (PyTorch) or onnx (onnxruntime). simulated-gpu is for capacity tests only: no model, "
            "each batch answered after a GPU's latency with a fixed pattern of boxes (docs/performance.md).",
        },
    ),
    (
        "--simulated-latency",
        "simulated_latency",
        {"help": "simulated-gpu: call time per batch size, BATCH:MS pairs (an H100's by default)."},
    ),
    ("--device", "device", {"help": "auto, cpu or a GPU index."}),
    ("--host", "host", {"help": "Proxy address; 0.0.0.0 exposes it (set FACEMASK_API_KEY)."}),
    (
        "--ingress",
        "ingress",
        {
            "type": click.Choice(["haproxy", "proxy"]),
            "help": "haproxy: HAProxy straight to each replica (several times less CPU per request, "
            "docs/performance.md); "
            "proxy: Serve's Python proxy with facemask's guard (docs/serving.md).",
        },
    ),
    ("--port", "port", {}),
    ("--replicas", "replicas", {"help": "Serve replicas (each holds the model)."}),
    (
        "--autoscale",
        "autoscale",
        {
            "metavar": "MIN:MAX",
            "help": "Scale between MIN and MAX replicas on the requests each holds, instead of --replicas.",
        },
    ),
    ("--target-ongoing", "target_ongoing", {"help": "--autoscale: requests per replica it aims for."}),
    ("--upscale-delay", "upscale_delay_s", {"help": "--autoscale: seconds over target before a replica is added."}),
    (
        "--downscale-delay",
        "downscale_delay_s",
        {"help": "--autoscale: seconds under target before a replica is removed."},
    ),
    (
        "--refresh-s",
        "refresh_s",
        {"help": "How often the model's alias is looked up again: promotions, canaries, rollbacks reach replicas."},
    ),
    ("--num-cpus", "num_cpus", {"help": "CPUs per replica."}),
    ("--num-gpus", "num_gpus", {"help": "GPUs per replica (0.25: four share one)."}),
    ("--max-batch-size", "max_batch_size", {}),
    (
        "--threads",
        "threads",
        {"type": int, "help": "CPU inference threads per replica (on CPU: replicas x threads = cores)."},
    ),
)
@click.option(
    "--sampling",
    "sampling_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A YAML file with a `sampling:` section (a camera list's fields; faces: keep|blur must be given): "
    "keep the images the model was unsure about, with its boxes as pre-labels (docs/learning.md). Off by default.",
)
@click.option(
    "--samples-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where --sampling keeps its images; default: samples/endpoint in the results folder.",
)
@click.option(
    "--print-node-env",
    is_flag=True,
    help="Print, as export lines, what a `ray start` node needs for this --ingress, and exit: "
    'eval "$(facemask serve --print-node-env)" before `ray start`.',
)
def serve_command(
    model_uri,
    backend,
    simulated_latency,
    host,
    ingress,
    port,
    replicas,
    autoscale,
    target_ongoing,
    upscale_delay_s,
    downscale_delay_s,
    num_cpus,
    num_gpus,
    sampling_file,
    samples_dir,
    print_node_env,
    **app,
):
    """Serve the detector, its API and page on this machine's Ray (Ctrl-C stops it).

    With no Ray running here it starts one set up for --ingress. On a Ray started beforehand
    (`ray start`, a cluster), the ingress is the one its nodes were started with: it says which."""
    if print_node_env:
        return click.echo(node_exports(ingress), nl=False)
    sampling = sampling_section(sampling_file)  # before the registry or Ray: a mistake in one line, at once
    configure_runtime()
    from facemask.detection.detector import resolve_model
    from facemask.serving.simulated_gpu import NAME as SIMULATED
    from facemask.serving.simulated_gpu import parse_latency
    from facemask.tracking import default_tracking_uri

    # Fail here, in one line, rather than in a replica's retries.
    if backend == SIMULATED:
        parse_latency(simulated_latency)
        model_uri = SIMULATED
    else:
        # Checked from the registry's metadata only: each replica downloads the weights.
        resolve_model(model_uri, backend=backend, tracking_uri=default_tracking_uri(), download=False)
    from facemask.serving import AppArgs  # here: the Serve application module imports Ray Serve itself

    scaling = replica_count(replicas, autoscale, target_ongoing, upscale_delay_s, downscale_delay_s)
    try:
        # `app` holds the options named as AppArgs' fields (device, max_batch_size, threads).
        resources = {**scaling, "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus}}
        app |= {"model_uri": model_uri, "backend": backend, "simulated_latency": simulated_latency}
        app |= {"sampling": sampling, "samples_dir": str(samples_dir) if samples_dir else None}
        args = AppArgs(**app, deployment_options=resources)
    except ValueError as exc:  # pydantic's ValidationError: an option out of range
        raise ConfigError(str(exc)) from None
    init_ray(serving=True, ingress=ingress)
    from facemask.core.runtime import node_ingress
    from facemask.serving.lifecycle import serve_until_stopped

    running = node_ingress()
    if running != ingress:
        click.echo(ingress_note(ingress, running), err=True)
    serve_until_stopped(args, host, port, lambda url: announcement(url, model_uri, backend, running))


def node_exports(ingress: str) -> str:
    """What a `ray start` node needs for `ingress`, as export lines (`--print-node-env`)."""
    import shlex

    from facemask.core.runtime import node_env

    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in node_env(ingress).items())


def sampling_section(path: Path | None) -> dict | None:
    """The `sampling:` section of --sampling's file, checked (a mistake names the file and the field)."""
    if path is None:
        return None
    import yaml

    from facemask.learning.sampler import SamplingRule

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--sampling {path}: not YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sampling"), dict):
        raise ConfigError(f"--sampling {path}: expected a `sampling:` mapping (faces: keep|blur, band, per_hour, ...)")
    SamplingRule.parse(doc["sampling"], f"{path}: sampling")
    return doc["sampling"]


def announcement(url: str, model_uri: str, backend: str, ingress: str) -> str:
    """What `facemask serve` prints once it serves: where, and where Prometheus scrapes it."""
    from facemask.core.runtime import metrics_endpoints

    scrape = ", ".join(metrics_endpoints(ingress))
    return (
        f"serving {model_uri} ({backend}, {ingress}) at {url}/  (API docs {url}/docs); Ctrl-C stops\n"
        f"metrics for Prometheus: {scrape}  (docs/operating.md)"
    )


def replica_count(replicas: int, autoscale: str | None, target: float, up_s: float, down_s: float) -> dict:
    """The deployment's replica options: a fixed count, or Serve's autoscaling for --autoscale."""
    if not autoscale:
        return {"num_replicas": replicas}
    if replicas != 1:
        raise ConfigError(f"--replicas {replicas} and --autoscale {autoscale}: give one (--autoscale sets the count)")
    return {"autoscaling_config": autoscaling_config(autoscale, target, up_s, down_s)}


def autoscaling_config(bounds: str, target: float, upscale_delay_s: float, downscale_delay_s: float) -> dict:
    """Serve's autoscaling_config for `--autoscale MIN:MAX`; ConfigError naming the fix when malformed."""
    low, sep, high = bounds.partition(":")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = -1
    if not sep or not 1 <= lo <= hi:
        raise ConfigError(
            f"--autoscale {bounds}: give MIN:MAX replicas with 1 <= MIN <= MAX, such as 1:4 (a replica must stay "
            "up: Serve's scale-to-zero would answer 503 while the model loads)"
        )
    if target <= 0 or upscale_delay_s < 0 or downscale_delay_s < 0:
        raise ConfigError("--target-ongoing must be above 0, --upscale-delay and --downscale-delay 0 or more")
    return {
        "min_replicas": lo,
        "initial_replicas": lo,
        "max_replicas": hi,
        "target_ongoing_requests": target,
        "upscale_delay_s": upscale_delay_s,
        "downscale_delay_s": downscale_delay_s,
    }


def ingress_note(asked: str, running: str) -> str:
    """Why the ingress is not the one asked for: Ray ran before, started without its settings."""
    return (
        f"note: this machine's Ray was started before, without the settings for --ingress {asked}, so "
        f"Serve runs its {'HAProxy' if running == 'haproxy' else 'Python proxy'} here; for {asked}, start "
        f'Ray with them: eval "$(facemask serve --ingress {asked} --print-node-env)" before `ray start`'
    )


@main.command("query")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--url",
    default=lambda: os.environ.get("FACEMASK_URL", "http://127.0.0.1:8000"),
    show_default="FACEMASK_URL or http://127.0.0.1:8000",
)
@click.option(
    "--model-version",
    "model_id",
    default=None,
    help="A registered version (3) or alias (champion); default: the server's.",
)
@click.option("--conf", type=float, default=None)
@click.option("--iou", type=float, default=None)
@click.option("--imgsz", type=int, default=None)
@click.option("--max-det", type=int, default=None)
@click.option("--save", type=click.Path(path_type=Path), default=None, help="Also write the annotated image here.")
@click.option(
    "--deadline",
    type=float,
    default=DEADLINE_S,
    show_default=True,
    help="Seconds to keep retrying a refused or reset connection (an endpoint restarting its proxy).",
)
@JSON_OPTION
@hidden_alias("--model", "model_id")
def query_command(image, url, model_id, conf, iou, imgsz, max_det, save, deadline, as_json):
    """Send IMAGE to a running endpoint and print its detections (API key from FACEMASK_API_KEY).

    Exits 2 when the endpoint refuses the request (4xx: the image, a parameter, the key) and
    1 when it fails or none answers."""
    from facemask.serving.client import Client

    client = Client(url, deadline_s=deadline)
    params = {"conf": conf, "iou": iou, "imgsz": imgsz, "max_det": max_det}
    try:
        result = client.predict(image, model=model_id, **params)
        if save:
            save.write_bytes(client.predict_image(image, model=model_id, **params))
    except EndpointError as exc:
        if exc.status >= 500:
            raise ServerFailure(f"{exc.status} {exc.error}: {url}: {exc.message}") from None
        raise EndpointError(exc.status, exc.error, f"{url}: {exc.message}") from None
    except OSError as exc:
        raise ServerFailure(
            f"{url}: no endpoint answered ({getattr(exc, 'reason', exc)}); start one with `facemask serve`"
        ) from None
    if as_json:
        emit(True, result)
        return
    click.echo(detections_table(result))
    if save:
        click.echo(f"annotated image: {save}")


def detections_table(result: dict) -> str:
    m, t, size = result["model"], result["timings"], result["image"]
    lines = [
        f"{len(result['detections'])} detections in {size['width']}x{size['height']} by "
        f"{m['name'] or m['uri']} v{m['version'] or '-'} ({m['backend']}), "
        f"inference {t['inference_ms']:.0f} ms, total {t['total_ms']:.0f} ms",
        "  counts: " + ", ".join(f"{k}={v}" for k, v in result["counts"].items()),
    ]
    for d in result["detections"]:
        b = d["box"]
        lines.append(
            f"  {d['label']:22s} {d['confidence']:.3f}  ({b['x1']:.0f}, {b['y1']:.0f}, {b['x2']:.0f}, {b['y2']:.0f})"
        )
    return "\n".join(lines)

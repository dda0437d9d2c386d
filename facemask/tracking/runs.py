"""MLflow runs: the tracking URI, experiments, and `RunLogger` for params, metrics and artifacts.

Logging is best-effort by design: a tracking server that stalls or disappears must never
kill a training that has cost hours. `RunLogger` warns once, keeps metrics it could not
send in a bounded buffer, retries after a cool-down, and always tries to close its run
as FINISHED or FAILED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from facemask.core.runtime import ensure_dir, results_base

log = logging.getLogger("facemask.tracking")

DEFAULT_EXPERIMENT = "facemask"
# MLflow limits a param value to 6000 characters and a batch to 100 params / 1000 metrics.
_PARAM_LIMIT = 6000
_FAILED = object()  # what a guarded call returns when MLflow did not take it


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else `mlflow.db` (sqlite) in `runtime.results_base()`.

    Read once, by an entry point (the CLI, a job, a Serve app's start-up); from there the
    store travels down as an argument, so every call that writes to it names it.

    That is the current folder, or FACEMASK_HOME (~/facemask) inside a Ray job, whose working
    directory is a temporary copy. The path is absolute so Ray workers and Tune trials, whose
    working directories differ, all write to the same file.
    """
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        return tracking_uri
    return f"sqlite:///{results_base() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None


def artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps artifacts: `mlruns/` beside the database.

    MLflow's own default is `./mlruns` in the working directory at the time, which under
    `ray job submit` is Ray's temporary copy: the weights would vanish with it.
    """
    db = sqlite_path(tracking_uri)
    return str(db.parent / "mlruns") if db is not None else None


def ensure_store(tracking_uri: str) -> str:
    """`uri`, with the folder of a sqlite store created: MLflow cannot create the file in a
    folder that does not exist (the results base on a fresh machine)."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        ensure_dir(db.parent)
    return tracking_uri


def client(tracking_uri: str):
    from mlflow import MlflowClient

    tracking_uri = ensure_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


STORE_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_SAME = object()


def set_process_store(tracking_uri: str | None, registry: str | None | object = _SAME) -> None:
    """Make `uri` this process's MLflow store: the one place the library writes it into the environment.

    Called where a process starts work for another one (a Tune trial, a Ray Train worker, a
    Serve replica): those start with their node's environment, not the driver's, and the
    store travels to them as an argument. None unsets it (back to `default_tracking_uri()`'s default);
    the registry is the same store unless given.
    """
    for key, value in zip(STORE_ENV, (tracking_uri, tracking_uri if registry is _SAME else registry)):
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API and registry at `uri` for a block (its `log_model` and
    `download_artifacts` take no store argument), then restore what they pointed at."""
    import mlflow

    saved = [os.environ.get(k) for k in STORE_ENV]
    set_process_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        # Back to the environment as it was, with nothing pinned: MLflow resolves the store from it
        # each time, as before the block (an explicit `mlflow.set_*_uri` writes the environment
        # too, so it is kept). Pinning the URIs MLflow had resolved outlived the block: every later
        # `MlflowClient(url)` of the process sent its registry calls to the old store.
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        set_process_store(*saved)


def experiment_id(name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created if missing (safe against a concurrent creator)."""
    c = client(tracking_uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_root(tracking_uri))
    except Exception:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys, values to strings MLflow accepts."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:_PARAM_LIMIT]
    return out


def metric_key(name: str) -> str:
    """Ultralytics names like `metrics/mAP50-95(B)` to `val/mAP50-95`: readable, and valid in MLflow."""
    name = name.replace("metrics/", "val/").replace("(B)", "")
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def dataset_input(source: str, name: str, digest: str, context: str, profile: dict | None = None):
    """A DatasetInput for `MlflowClient.log_inputs`, from MLflow's public entities: a dataset known by
    its source and digest only, recorded as MLflow records a file's (`{"uri": ...}`, its scheme or
    "local"). Logged by run id: `mlflow.log_input` logs only to this thread's active run, which a
    logger shared by Ultralytics' callbacks and Ray workers does not have. `profile` (JSON) says
    what the dataset is made of (`facemask.core.manifest.dataset_profile`): its lineage."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type = source.split("://", 1)[0] if "://" in source else "local"
    dataset = Dataset(
        name=name,
        digest=digest[:36],
        source_type=source_type,
        source=json.dumps({"uri": source}),
        profile=json.dumps(profile, sort_keys=True) if profile else None,
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


class RunLogger:
    """One MLflow run, logged best-effort. Use as a context manager or call `end()`.

    Every call is guarded: the first failure warns (once), later ones are silent; while
    the server is unreachable calls are skipped for `cooldown_s`, and metrics are kept
    (up to `buffer`) to be sent when it answers again.
    """

    def __init__(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        *,
        tracking_uri: str,
        run_id: str | None = None,
        reopen: bool = False,
        enabled: bool = True,
        system_metrics: bool = True,
        cooldown_s: float = 5.0,
        buffer: int = 10_000,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_id: str | None = run_id
        self.failures = 0
        self._warned = False
        self._down_until = 0.0
        self._pending: deque = deque(maxlen=buffer)
        self._lock = threading.Lock()
        self._monitor = None
        self._cooldown = cooldown_s
        self._client = None
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        if run_name:
            tags["mlflow.runName"] = run_name
        if not enabled:
            self.run_id = None
            return
        if self.run_id is None:
            started = self._call(self._start, experiment, tags)
            self.run_id = None if started is _FAILED else started
        elif reopen:
            # A retried trial or resumed study: the run is RUNNING again until ended again.
            self._call(self._c.update_run, self.run_id, "RUNNING")
            tags.pop("mlflow.runName", None)
            if tags:
                self.set_tags(tags)
        if self.run_id and system_metrics:
            self._call(self._start_monitor)

    @property
    def _c(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _start(self, experiment: str, tags: dict[str, str]) -> str:
        run = self._c.create_run(experiment_id(experiment, self.tracking_uri), tags=tags)
        return run.info.run_id

    def _start_monitor(self) -> None:
        from facemask.compat.mlflow import system_metrics_monitor

        self._monitor = system_metrics_monitor(self.run_id, self.tracking_uri)

    def _call(self, fn, *args, **kwargs):
        """Run one MLflow call; on failure warn once, back off, return `_FAILED`."""
        if time.monotonic() < self._down_until:
            return _FAILED
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any client, network or store error: logging must not kill training
            self.failures += 1
            self._down_until = time.monotonic() + self._cooldown
            if not self._warned:
                self._warned = True
                log.warning("MLflow logging failed (%s: %s); training goes on, will retry", type(exc).__name__, exc)
            return _FAILED

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self._call(self._c.log_batch, self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self._call(self._c.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics; ones that cannot be sent now are kept and sent later."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            for key, value in metrics.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                self._pending.append(Metric(key, number, now, step or 0))
            self._flush()

    def _flush(self) -> None:
        while self._pending:
            batch = [self._pending[i] for i in range(min(len(self._pending), 1000))]
            if self._call(self._c.log_batch, self.run_id, metrics=batch) is _FAILED:
                return
            for _ in batch:
                self._pending.popleft()

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            self._call(self._c.log_artifact, self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        if self.active:
            self._call(self._c.log_dict, self.run_id, data, name)

    def log_figure(self, figure, name: str) -> None:
        if self.active:
            self._call(self._c.log_figure, self.run_id, figure, name)

    def log_dataset(
        self, name: str, source: str, digest: str, context: str = "training", profile: dict | None = None
    ) -> None:
        """Record the prepared dataset as an MLflow dataset input of this run, `profile` its lineage."""
        if not self.active:
            return

        def send() -> None:
            self._c.log_inputs(self.run_id, datasets=[dataset_input(source, name, digest, context, profile)])

        self._call(send)

    def stop_monitor(self) -> None:
        """Stop sampling system metrics, without writing anything (a stop that closes the run elsewhere)."""
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                self._monitor.finish()
            self._monitor = None

    def end(self, status: str = "FINISHED", wait_s: float = 45.0) -> bool:
        """Close the run as FINISHED/FAILED/KILLED, retrying for up to `wait_s` past an outage.

        Metrics kept during an outage are sent first, so a server that comes back (a
        restart, a network blip) ends up with the whole run.
        """
        if not self.active:
            return False
        self.stop_monitor()
        deadline = time.monotonic() + wait_s
        while True:
            self._down_until = 0.0
            with self._lock:
                self._flush()
            if not self._pending and self._call(self._c.set_terminated, self.run_id, status) is not _FAILED:
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(2.0)
        log.warning(
            "could not mark MLflow run %s as %s: the tracking server at %s did not answer",
            self.run_id,
            status,
            self.tracking_uri,
        )
        return False

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def log_to_run(run_id: str, metrics: dict[str, float], artifacts: list[tuple[Path, str]], tracking_uri: str) -> bool:
    """Add metrics and artifacts to an existing (possibly finished) run, without reopening it.

    Best-effort like every RunLogger call; returns False if MLflow did not take all of it.
    """
    logger = RunLogger(run_id=run_id, tracking_uri=tracking_uri, system_metrics=False)
    if metrics:
        logger.log_metrics(metrics)
    for path, folder in artifacts:
        logger.log_artifact(path, folder)
    return logger.failures == 0 and not logger._pending


def find_child_run(parent_run_id: str, tag: str, value: str, tracking_uri: str) -> str | None:
    """The child run of `parent_run_id` tagged `tag=value` (a retried trial's run), or None.

    Best-effort: an unreachable server gives None, and the caller makes a new run.
    """
    try:
        c = client(tracking_uri)
        parent = c.get_run(parent_run_id)
        runs = c.search_runs(
            [parent.info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{tag}` = '{value}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
    except Exception:  # logging is best-effort; a new run is the fallback
        return None


def find_tagged_run(experiment: str, tag: str, value: str, tracking_uri: str) -> str | None:
    """The run of `experiment` tagged `tag=value` (a study's parent run), or None."""
    c = client(tracking_uri)
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = c.search_runs([found.experiment_id], f"tags.`{tag}` = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


def end_open_runs(run_id: str, status: str, tracking_uri: str, tags: dict[str, str] | None = None) -> list[str]:
    """Mark `run_id` and every child run of it still RUNNING as `status` (KILLED after a stop):
    what a stopped study leaves open. Returns the ids it closed; `--resume` reopens them."""
    c = client(tracking_uri)
    parent = c.get_run(run_id)
    children = c.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
    )
    closed = []
    for run in [parent, *children]:
        if run.info.status == "RUNNING":
            for key, value in (tags or {}).items():
                c.set_tag(run.info.run_id, key, value)
            c.set_terminated(run.info.run_id, status)
            closed.append(run.info.run_id)
    return closed


def close_run(run_id: str, status: str, tags: dict[str, str], tracking_uri: str, weights: Path | None = None) -> None:
    """End a run as `status` with `tags`; upload `weights` as weights/<name> unless the run has it already."""
    c = client(tracking_uri)
    if weights is not None and weights.is_file():
        present = {a.path for a in c.list_artifacts(run_id, "weights")}
        if f"weights/{weights.name}" not in present:
            c.log_artifact(run_id, str(weights), "weights")
    for key, value in tags.items():
        c.set_tag(run_id, key, value)
    c.set_terminated(run_id, status)

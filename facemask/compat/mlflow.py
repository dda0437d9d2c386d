"""MLflow's private parts the run logger uses: a dataset's entity (`_to_mlflow_entity`), to log a
dataset input to a run by its id (the public `mlflow.log_input` logs only to the active run of
this thread, which a logger shared by Ultralytics' callbacks and Ray workers does not have), and
the system-metrics monitor, for the same reason (`log_system_metrics=True` exists only on
`mlflow.start_run`)."""

from __future__ import annotations

from facemask.compat import require

CHECKED = ("mlflow", "3.7", "4")
VERSION = require(*CHECKED, __name__)


def dataset_input(source: str, name: str, digest: str, context: str):
    """A DatasetInput for `MlflowClient.log_inputs`: a dataset known by its source and digest only."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": both are local files
        dataset = MetaDataset(resolve_dataset_source(source), name=name, digest=digest[:36])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def system_metrics_monitor(run_id: str, tracking_uri: str, sampling_interval: float = 5):
    """A started monitor that logs CPU, memory and GPU use to `run_id` until its `finish()`."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=sampling_interval, samples_before_logging=1, tracking_uri=tracking_uri
    )
    monitor.start()
    return monitor

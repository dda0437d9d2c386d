"""MLflow's private part the run logger uses: the system-metrics monitor, to sample one run by its
id (`log_system_metrics=True` exists only on `mlflow.start_run`, which makes the run the active
run of one thread; a logger shared by Ultralytics' callbacks and Ray workers has none)."""

from __future__ import annotations

from facemask.compat import require

CHECKED = ("mlflow", "3.7", "4")
VERSION = require(*CHECKED, __name__)


def system_metrics_monitor(run_id: str, tracking_uri: str, sampling_interval: float = 5):
    """A started monitor that logs CPU, memory and GPU use to `run_id` until its `finish()`."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=sampling_interval, samples_before_logging=1, tracking_uri=tracking_uri
    )
    monitor.start()
    return monitor

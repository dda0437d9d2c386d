"""The tracking layer: the only code that talks to MLflow.

- `runs`: the tracking URI, experiments, `RunLogger` (best-effort run logging) and run look-ups;
- `registry`: registered versions, aliases, downloading a version's weights;
- `model_cache`: downloaded versions kept once per machine, the least recently used pruned;
- `server`: a local `mlflow server` for studies whose trials log concurrently.
"""

from facemask.tracking.registry import (
    alias_version,
    aliases_and_tags,
    delete_alias,
    fetch_model,
    list_versions,
    log_and_register,
    model_version,
    set_alias,
    set_model_tag,
    set_version_tags,
    version_metrics,
)
from facemask.tracking.runs import (
    DEFAULT_EXPERIMENT,
    RunLogger,
    client,
    close_run,
    default_tracking_uri,
    end_open_runs,
    ensure_store,
    experiment_id,
    find_child_run,
    find_tagged_run,
    flatten,
    log_to_run,
    metric_key,
    set_process_store,
    using_tracking_uri,
)
from facemask.tracking.server import check_tracking_reachable, hosts_elsewhere, study_tracking_uri

__all__ = [
    "default_tracking_uri",
    "DEFAULT_EXPERIMENT",
    "RunLogger",
    "set_process_store",
    "alias_version",
    "aliases_and_tags",
    "delete_alias",
    "check_tracking_reachable",
    "client",
    "close_run",
    "end_open_runs",
    "ensure_store",
    "experiment_id",
    "fetch_model",
    "find_child_run",
    "find_tagged_run",
    "flatten",
    "hosts_elsewhere",
    "list_versions",
    "log_and_register",
    "log_to_run",
    "metric_key",
    "model_version",
    "set_alias",
    "set_model_tag",
    "set_version_tags",
    "study_tracking_uri",
    "using_tracking_uri",
    "version_metrics",
]

"""Ray's private parts the platform reads: whether the local cluster this process started is
still alive, Serve's controller and its replica table, whether this process is a Serve
replica, and the option that fixes a local node's metrics port. None of them has a public
equivalent in Ray 2.60 (`serve.status()` gives neither the replicas' actor names nor their
states per route, which the proxy guard matches against the live actors; `ray start` has
--metrics-export-port, `ray.init` only `_metrics_export_port`)."""

from __future__ import annotations

from facemask.compat import require

CHECKED = ("ray", "2.60.0", "2.61")
VERSION = require(*CHECKED, __name__)


def local_core_died() -> bool:
    """True when this process started a local Ray whose raylet or GCS process has exited; False
    when it joined a cluster (nothing of it runs here) or started none."""
    import ray._private.worker

    node = ray._private.worker._global_node
    processes = (node.all_processes or {}) if node is not None else {}
    core = [info.process for kind in ("raylet", "gcs_server") for info in processes.get(kind, [])]
    return any(proc.poll() is not None for proc in core)


def serve_controller():
    """The handle of Serve's controller actor (raises ValueError while there is none)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def serve_instance_details(controller):
    """An ObjectRef of the controller's replica table: applications, deployments, each replica's
    `actor_name` and `state` (ServeInstanceDetails as a dict)."""
    return controller.get_serve_instance_details.remote()


def in_serve_replica() -> bool:
    """True in a Serve replica's process (it has a replica context), false in Serve's proxy."""
    from ray.serve.context import _get_internal_replica_context

    return _get_internal_replica_context() is not None


def metrics_port_option(port: int) -> dict:
    """`ray.init`'s keyword for the Prometheus port of the node it starts (`_metrics_export_port`,
    listed in its docstring)."""
    return {"_metrics_export_port": port}

"""A guard for each reach in facemask/compat/ on the installed versions: a dependency that moved
a private part fails here, by name, instead of in a worker group, a proxy or a replica."""

from __future__ import annotations

import importlib
import inspect
import signal
import subprocess

import numpy as np
import pytest

from facemask.compat import IncompatibleDependencyError, require

MODULES = ("ray", "ultralytics", "mlflow", "uvicorn", "onnxruntime")


@pytest.mark.parametrize("vendor", MODULES)
def test_each_room_imports_on_the_installed_version_and_names_its_range(vendor):
    module = importlib.import_module(f"facemask.compat.{vendor}")
    package, low, below = module.CHECKED
    assert package == vendor and module.VERSION


def test_a_version_outside_the_range_is_refused_in_one_line():
    with pytest.raises(IncompatibleDependencyError) as refused:
        require("ray", "0.1", "0.2", "facemask.compat.ray")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("ray 2.") and "pip install 'ray>=0.1,<0.2'" in message
    with pytest.raises(IncompatibleDependencyError, match="not installed"):
        require("no-such-package-here", "1", "2", "facemask.compat.x")


def test_ray_the_local_node_processes_serve_controller_and_replica_context():
    import ray._private.worker
    from ray._private.node import Node
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve._private.controller import ServeController
    from ray.serve.schema import ReplicaDetails

    from facemask.compat.ray import in_serve_replica, local_core_died

    assert hasattr(ray._private.worker, "_global_node") and "self.all_processes" in inspect.getsource(Node)
    assert local_core_died() is False  # no Ray started in this process
    assert SERVE_CONTROLLER_NAME and SERVE_NAMESPACE
    assert callable(getattr(ServeController, "get_serve_instance_details", None))
    assert {"actor_name", "state"} <= set(ReplicaDetails.model_fields)
    assert in_serve_replica() is False


def test_ray_init_takes_the_metrics_port_option():
    import ray

    from facemask.compat.ray import metrics_port_option

    (keyword,) = metrics_port_option(8080)
    source = inspect.getsource(ray.init)
    assert f'kwargs.pop("{keyword}"' in source and keyword in (ray.init.__doc__ or "")


def test_uvicorn_the_protocol_hooks_and_the_config_the_bounds_replace():
    import uvicorn

    from facemask.compat.uvicorn import http_tools_protocol

    protocol = http_tools_protocol()
    assert protocol is not None
    for name in ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_headers_complete"):
        assert callable(getattr(protocol, name)), name
    assert "http" in inspect.signature(uvicorn.Config.__init__).parameters


def test_onnxruntime_sessions_made_inside_get_the_threads_and_no_spinning():
    import onnxruntime

    from facemask.compat.onnxruntime import session_options

    original = onnxruntime.SessionOptions
    with session_options(3):
        options = onnxruntime.SessionOptions()
        assert options.intra_op_num_threads == 3
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert onnxruntime.SessionOptions is original


def test_mlflow_the_system_metrics_monitor():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    parameters = inspect.signature(SystemMetricsMonitor.__init__).parameters
    assert {"run_id", "sampling_interval", "samples_before_logging", "tracking_uri"} <= set(parameters)


def test_ultralytics_the_validator_stats_each_image_passes_through():
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import DetMetrics

    source = inspect.getsource(DetectionValidator.update_metrics)
    for key in ('"im_name"', '"conf"', '"pred_cls"', '"target_cls"', "self.metrics.update_stats("):
        assert key in source, key
    assert "self._process_batch(predn, pbatch)" in source
    assert '"tp"' in inspect.getsource(DetectionValidator._process_batch)
    assert callable(DetMetrics.update_stats)


def test_ultralytics_bytetrack_on_plain_arrays_keeps_an_id_across_frames():
    from facemask.compat.ultralytics import ByteTracker

    tracker = ByteTracker(frame_rate=30)
    xywh = np.array([[100, 100, 40, 50], [300, 120, 42, 52]], np.float32)
    conf, cls = np.array([0.9, 0.8], np.float32), np.array([0, 1], np.float32)
    rows = [tracker.update(xywh + shift, conf, cls) for shift in (0, 2, 4)]
    assert rows[-1].shape == (2, 8)
    ids = {int(r[7]): int(r[4]) for r in rows[-1]}
    assert ids == {int(r[7]): int(r[4]) for r in rows[1]} and len(set(ids.values())) == 2


def test_ultralytics_bytetrack_keeps_a_lost_track_for_the_frames_set_after_construction():
    from facemask.compat.ultralytics import ByteTracker

    xywh, conf, cls = np.array([[100, 100, 40, 50]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.float32)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    ids = []
    for rate in (2, 10):  # built for 30 fps, then told frames come at `rate`
        tracker = ByteTracker(frame_rate=30)
        first = [tracker.update(xywh, conf, cls) for _ in range(3)][-1]
        tracker.set_frame_rate(rate)
        for _ in range(5):  # lost for 5 updates: kept at 10 fps (a second), dropped at 2
            tracker.update(*empty)
        again = [tracker.update(xywh, conf, cls) for _ in range(3)][-1]
        ids.append((int(first[0][4]), int(again[0][4])))
    assert ids[0][0] != ids[0][1] and ids[1][0] == ids[1][1], ids


def test_ray_starts_its_local_processes_through_console_popen_and_they_get_a_group_of_their_own():
    """`local_ray_in_its_own_process_group` swaps the Popen class `start_ray_process` looks up
    at each call: a child started under it leads a group of its own, and the swap is undone."""
    import os

    import ray._private.services as services
    import ray._private.utils as utils

    from facemask.compat.ray import local_ray_in_its_own_process_group

    assert utils.detect_fate_sharing_support()  # Linux: Ray's children die with their parent
    assert "ConsolePopen(" in inspect.getsource(services.start_ray_process)
    original = services.ConsolePopen
    with local_ray_in_its_own_process_group():
        child = services.ConsolePopen(["sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        assert services.ConsolePopen is original
        assert os.getpgid(child.pid) == child.pid != os.getpgrp()
    finally:
        child.kill()
        child.wait()


def test_ray_init_gives_up_on_its_local_node_after_a_fixed_wait_with_a_bare_exception(monkeypatch, tmp_path):
    """What `node_start_timed_out` matches is what Ray raises; a command turns it into one line
    naming the busy machine and the fix, exit 1, not an "internal error"."""
    import ray
    from click.testing import CliRunner
    from ray._private.node import Node

    from facemask.cli import main
    from facemask.compat.ray import NODE_START_TIMED_OUT, node_start_timed_out

    source = inspect.getsource(Node)
    assert "raylet_start_wait_time_s = 30" in source and NODE_START_TIMED_OUT in source
    assert node_start_timed_out(Exception(f"{NODE_START_TIMED_OUT}. This could happen because ..."))
    assert not node_start_timed_out(RuntimeError(NODE_START_TIMED_OUT)) and not node_start_timed_out(Exception("x"))

    # Each try leaves a process behind, as a node that missed its 30 s leaves its GCS and raylet,
    # and an error line in the session's raylet log.
    logs = tmp_path / "ray-tmp" / "ray" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    left = []

    def timed_out(*args, **kwargs):
        left.append(subprocess.Popen(["sleep", "600"]))
        (logs / "raylet.out").write_text(f"[2026-12-08 00:43:30,123 E 6466 6466] raylet.cc:1: try {len(left)}\n")
        raise Exception(f"{NODE_START_TIMED_OUT}. This could happen because some of the raylet failed to startup")

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from facemask.data.synth import synthesize

    synthesize(tmp_path / "src", images=4, seed=1)
    args = ["data", "prepare", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--engine", "ray"]
    try:
        result = CliRunner().invoke(main, args)
        assert [proc.poll() for proc in left] == [-signal.SIGTERM] * 2  # tried twice, each try's processes ended
    finally:
        for proc in left:
            proc.kill()
            proc.wait()
    assert result.exit_code == 1, result.output
    assert "did not register within Ray's fixed 30 s in 2 tries" in result.output, result.output
    assert "RAY_ADDRESS=auto" in result.output and "its gcs_server and raylet had exited" in result.output
    assert "raylet.out: [2026-12-08 00:43:30,123 E 6466 6466] raylet.cc:1: try 2" in result.output
    assert f"logs in {logs}" in result.output, result.output
    assert "internal error" not in result.output


def test_ultralytics_a_models_architecture_rebuilt_with_three_classes_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an export of a yaml-built model lands
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    import onnxruntime
    from ultralytics import YOLO

    from facemask.compat.ultralytics import with_class_count

    yolo = with_class_count(YOLO("yolo26n.yaml", task="detect"), 3)
    assert yolo.model.yaml["nc"] == 3
    exported = yolo.export(format="onnx", imgsz=64, dynamic=False, simplify=False, device="cpu")
    outputs = onnxruntime.InferenceSession(exported, providers=["CPUExecutionProvider"]).get_outputs()
    # 4 box coordinates and a score per class (3, not 80) for each of the 84 anchors at 64 px (8², 4², 2²).
    assert [o.shape for o in outputs] == [[1, 4 + 3, 8 * 8 + 4 * 4 + 2 * 2]]


def test_a_local_ray_whose_metrics_port_was_taken_meanwhile_starts_again_on_another(monkeypatch, tmp_path):
    """Two commands starting together both found the documented metrics port free; the node of the
    one that lost the port never registers (Ray times out). The second try chooses a port anew."""
    import socket

    import ray

    from facemask.compat.ray import NODE_START_TIMED_OUT
    from facemask.core import runtime

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ports, holder = [], socket.socket()

    def init(**kwargs):
        ports.append(kwargs["_metrics_export_port"])
        if len(ports) == 1:  # the other command's node binds the port this one chose
            holder.bind(("127.0.0.1", ports[0]))
            holder.listen()
            raise Exception(f"{NODE_START_TIMED_OUT}. This could happen because some of the raylet failed")

    monkeypatch.setattr(ray, "init", init)
    with holder:
        runtime._start_or_join_ray(export_metrics=True)
    assert len(ports) == 2 and ports[1] != ports[0], ports

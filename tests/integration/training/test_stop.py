"""Long commands stop cleanly and resume: SIGTERM (to the process or its whole group) and
`ray job stop` end each within 30 s with one line and exit 143, leave no MLflow run RUNNING
and no process behind, and a stopped study resumes with every trial once. Trials are sized
to fit a 2-CPU machine, and one that cannot fit is refused before anything starts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.integration.training.test_tune import SPACE
from tests.services import study_args as small_study
from tests.services import wait_until

pytestmark = pytest.mark.integration
# The studies are heavy (tests/machine_lock.py); one training or a folder's predictions are not,
# and their bound (an exit within 30 s of the signal) holds beside the heavy tests' worker.
STUDY = pytest.mark.heavy(
    reason="a study's trials trained side by side or by two Ray Train workers, stopped and resumed"
)
ROOT = Path(__file__).resolve().parents[3]
FACEMASK = [sys.executable, "-m", "facemask.cli"]
STOP_WITHIN_S = 30


def command_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def start(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """A command in its own session (its own process group), as a shell or systemd would start it."""
    return subprocess.Popen(
        args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )


def stop_and_time(proc: subprocess.Popen, group: bool, sig: int = signal.SIGTERM) -> tuple[int, float, list]:
    """Signal the process (or its group); (exit status, seconds to exit, its descendants still alive after)."""
    descendants = psutil.Process(proc.pid).children(recursive=True)
    started = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=STOP_WITHIN_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running {STOP_WITHIN_S + 30}s after the signal")
    seconds = time.monotonic() - started
    print(f"{' '.join(proc.args[2:5])}: exit {code} {seconds:.1f} s after the signal")  # the figure in the docs

    def alive() -> list:
        return [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    deadline = time.monotonic() + 15  # a child that got the signal too may take a moment to go
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = alive()
    for p in left:  # never leave them to the next test
        p.kill()
    return code, seconds, [" ".join(p.cmdline())[:120] for p in left]


def runs_of(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def study_args(data: Path, space: Path, storage: Path, experiment: str, trials: int = 2, epochs: int = 2) -> list[str]:
    """A small study: `trials` trials of `epochs` epochs, one at a time, none stopped early by ASHA."""
    options = {"trials": trials, "epochs": epochs, "batch": 8, "max_concurrent": 1, "grace_period": epochs}
    return small_study(data, space, experiment, **options, storage=storage, name="study", no_promote=True)


@pytest.fixture()
def two_trial_space(tmp_path) -> Path:
    good = SPACE["baseline"][0]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"space": SPACE["space"], "baseline": [good, {**good, "lr0": 0.01}]}))
    return path


def assert_resumed_once(tracking_uri: str, experiment: str, trials: int) -> None:
    runs = runs_of(tracking_uri, experiment)
    parents = [r for r in runs if "facemask.study_path" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if "facemask.trial_id" in r.data.tags]
    assert len(children) == trials and len({r.data.tags["facemask.trial_id"] for r in children}) == trials
    assert all(r.info.status in ("FINISHED", "KILLED") and "facemask.trial_status" in r.data.tags for r in children)


@STUDY
def test_tune_stopped_by_sigterm_to_its_process_group_resumes(tiny_data, tmp_path, two_trial_space):
    """`kill -- -PGID` (a terminal's hang-up, a supervisor) reaches the command alone: the local
    Ray it started has process groups of its own, and the command stops it in order."""
    experiment = "stop-group"
    env = command_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: sqlite under the working dir, behind the study's server
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = FACEMASK + ["tune", *study_args(tiny_data, two_trial_space, tmp_path / "studies", experiment)]
    log = tmp_path / "tune.log"
    proc = start(args, log, env, tmp_path)
    # Mid-study: the first trial has reported an epoch, so its checkpoint exists.
    wait_until(
        lambda: list((tmp_path / "studies" / "study").glob("run_trial_*/checkpoint_*")),
        300,
        "trial checkpoint",
        proc,
        log,
    )
    code, seconds, left = stop_and_time(proc, group=True)
    output = log.read_text()
    assert code == 143, output[-3000:]
    assert seconds < STOP_WITHIN_S and not left, (seconds, left)
    last = [line for line in output.splitlines() if line.startswith("stopped by SIGTERM")]
    assert last and "--resume" in last[-1], output[-2000:]
    assert "Aborted" not in output and "core dumped" not in output
    assert [r.info.status for r in runs_of(tracking_uri, experiment) if r.info.status == "RUNNING"] == []

    resumed = subprocess.run(
        args + ["--resume", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_resumed_once(tracking_uri, experiment, trials=2)
    # --json: stdout holds the study's result and nothing else, whatever Ray and Ultralytics printed.
    answer = json.loads(resumed.stdout)
    assert answer["state"] == "finished" and answer["counts"]["finished"] + answer["counts"]["stopped_early"] == 2
    assert answer["parent_run_id"] and answer["best_config"] and "mAP50-95" in answer["best_val"]


@STUDY
def test_tune_stopped_by_ray_job_stop_resumes(tiny_data, mlflow_server, tmp_path, two_trial_space):
    """`ray job stop` sends SIGTERM to the job's driver, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S
    (3 s by default; docs/reliability.md says to give it 30)."""
    from tests.services import RayCluster

    cluster = RayCluster(
        Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp")),
        {**command_env(RAY_AUTH_MODE="token"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    experiment = "stop-job"
    runtime_env = json.dumps(
        {
            "env_vars": {
                "MLFLOW_TRACKING_URI": mlflow_server.uri,
                "YOLO_OFFLINE": "1",
                "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"],
                "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WITHIN_S),
            }
        }
    )
    args = [
        "python",
        str(ROOT / "jobs" / "tune.py"),
        # Long enough that the stop, which takes the `ray` command a few seconds to send, lands mid-study:
        # one trial at a time, so the second has not begun while the first trains its 3 epochs.
        *study_args(tiny_data, two_trial_space, tmp_path / "studies", experiment, epochs=3),
    ]

    def submit(extra: list[str], wait: bool) -> str:
        run = cluster.submit("--runtime-env-json", runtime_env, *([] if wait else ["--no-wait"]), "--", *args, *extra)
        return run.stdout + run.stderr

    try:
        cluster.start_head(num_cpus=2, resources={"head": 1})
        submitted = submit([], wait=False)
        job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted).group(0)
        wait_until(
            lambda: list((tmp_path / "studies" / "study").glob("run_trial_*/checkpoint_*")), 300, "trial checkpoint"
        )
        started = time.monotonic()
        stop = cluster.job("stop", job_id)  # returns once the job has ended
        seconds = time.monotonic() - started
        assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
        status = cluster.job("status", job_id)
        assert "was stopped" in status.stdout + status.stderr
        logs = cluster.job("logs", job_id).stdout
        assert seconds < STOP_WITHIN_S + 5  # the job's exit, plus the CLI's one-second polling
        assert any(line.startswith("stopped by SIGTERM") and "--resume" in line for line in logs.splitlines()), logs[
            -3000:
        ]
        assert [r for r in runs_of(mlflow_server.uri, experiment) if r.info.status == "RUNNING"] == []

        resumed = submit(["--resume"], wait=True)
        assert "succeeded" in resumed, resumed[-3000:]
        assert_resumed_once(mlflow_server.uri, experiment, trials=2)
    finally:
        cluster.stop()


def test_train_stopped_by_sigterm_ends_its_run_killed(tiny_data, mlflow_server, tmp_path):
    experiment = f"stop-train-{os.getpid()}"
    log = tmp_path / "train.log"
    proc = start(
        FACEMASK
        + [
            "train",
            "--data",
            str(tiny_data),
            "--weights",
            "yolo26n.yaml",
            "--epochs",
            "30",
            "--imgsz",
            "160",
            "--batch",
            "8",
            "--device",
            "cpu",
            "--experiment",
            experiment,
            "--project",
            str(tmp_path / "runs"),
        ],
        log,
        command_env(MLFLOW_TRACKING_URI=mlflow_server.uri),
        tmp_path,
    )
    wait_until(lambda: list((tmp_path / "runs").glob("*/weights/last.pt")), 300, "first epoch's weights", proc, log)
    code, seconds, left = stop_and_time(proc, group=False)
    output = log.read_text()
    assert code == 143 and seconds < STOP_WITHIN_S and not left, (code, seconds, left, output[-2000:])
    assert "stopped by SIGTERM: facemask train:" in output
    assert [r.info.status for r in runs_of(mlflow_server.uri, experiment)] == ["KILLED"]


def test_predict_on_a_folder_stopped_by_sigterm_to_its_group(registered_detector, synth_source, tmp_path):
    images = tmp_path / "many"
    images.mkdir()
    originals = sorted((synth_source / "images").iterdir())
    for i in range(600):  # enough that it is still at work when the signal comes
        (images / f"{i:04d}{originals[i % len(originals)].suffix}").symlink_to(originals[i % len(originals)])
    log = tmp_path / "predict.log"
    proc = start(
        FACEMASK
        + [
            "predict",
            str(images),
            "--out",
            str(tmp_path / "out"),
            "--model-uri",
            str(registered_detector["weights"]),
            "--imgsz",
            "160",
            "--device",
            "cpu",
            "--engine",
            "ray",
            "--concurrency",
            "1",
        ],
        log,
        command_env(),
        tmp_path,
    )

    # Mid-run: the model actors have annotated some images, not all.
    wait_until(lambda: list((tmp_path / "out" / "annotated").glob("*.jpg")), 180, "annotated image", proc, log)
    code, seconds, left = stop_and_time(proc, group=True)
    output = log.read_text()
    assert code == 143 and seconds < STOP_WITHIN_S and not left, (code, seconds, left, output[-2000:])
    assert "stopped by SIGTERM: facemask predict:" in output and "core dumped" not in output


@STUDY
def test_two_worker_trials_fit_a_two_cpu_machine(tiny_data, mlflow_server, tmp_path):
    """Each trial's driver reserves a token 0.01 CPU; its two Ray Train workers share the rest.

    In a process of its own with `ray.init(num_cpus=2)`, so that nothing this study's Ray Train
    runs leave behind can reach the session's shared cluster.
    """
    code = (
        "import json, sys, ray\n"
        "from facemask.core.runtime import configure_runtime\n"
        "from facemask.tracking import default_tracking_uri\n"
        "from facemask.training.tune import StudyConfig, tune\n"
        "configure_runtime()\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        "cfg = StudyConfig(data=sys.argv[1], model='yolo26n.yaml', trials=2, epochs=1, imgsz=160, batch=8,\n"
        "                  cpus_per_trial=2, ray_workers_per_trial=2, storage=sys.argv[2], name='w2',\n"
        "                  metric='cls_loss', mode='min', experiment='two-workers', register=False, max_failures=0,\n"
        "                  tracking_uri=default_tracking_uri())\n"
        "print('RESULT ' + json.dumps(tune(cfg).counts))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tiny_data), str(tmp_path / "studies")],
        env=command_env(MLFLOW_TRACKING_URI=mlflow_server.uri, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert counts["finished"] == 2 and counts["failed"] == 0, counts
    logs = list((tmp_path / "studies" / "w2-yolo").glob("*/ray-train/*/ranks.jsonl"))
    assert len(logs) == 2
    for path in logs:
        epochs = [json.loads(line) for line in path.read_text().splitlines()]
        assert [len(e["ranks"]) for e in epochs] == [2]


def test_a_trial_that_cannot_fit_is_refused_in_one_line(tiny_data, tmp_path):
    started = time.monotonic()
    refused = subprocess.run(
        FACEMASK
        + [
            "tune",
            "--data",
            str(tiny_data),
            "--weights",
            "yolo26n.yaml",
            "--ray-workers-per-trial",
            "3",
            "--cpus-per-trial",
            "2",
        ],
        env=command_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 10
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray-workers-per-trial 3 needs one CPU per worker" in lines[0], refused.stderr

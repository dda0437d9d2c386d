"""jobs/benchmarks/gpu_figures.sh run as a GPU user runs it, with DEVICE=cpu and toy sizes:
every command line it holds reaches the code it names, it installs the wheels it is given,
and each step's figures land in its output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.heavy(reason="the GPU script's whole study and benchmarks, rehearsed on the CPU"),
]
ROOT = Path(__file__).resolve().parents[3]


def tiny_wheel(folder: Path) -> Path:
    """A wheel holding one module, to see the script install what it is given."""
    folder.mkdir()
    path = folder / "facemask_probe-1.0-py3-none-any.whl"
    info = "facemask_probe-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("facemask_probe.py", "ANSWER = 42\n")
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: facemask-probe\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return folder


@pytest.mark.over_budget(
    reason="the rehearsal's worth is that each step's command runs whole, as on the GPU machine: two exports, a "
    "registered training, a 2-trial study with its own Ray, the loop's limit and (with wrk) a load run, each at its "
    "smallest (1 epoch at 160 on 36 images); about 190 s here, more on a slower 2-core machine"
)
def test_the_gpu_script_rehearsed_on_cpu(synth_source, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DEVICE": "cpu",
        "EPOCHS": "1",
        "IMGSZ": "160",
        "BATCH": "8",
        "LOAD_SECONDS": "2",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    wheels = tiny_wheel(tmp_path / "wheels")
    run = subprocess.run(
        ["bash", "jobs/benchmarks/gpu_figures.sh", "--wheels", str(wheels), str(synth_source), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert (out / "site" / "facemask_probe.py").is_file()
    for step in ("raw_model", "training", "study", "train_limit"):
        assert f"{step}: done in" in run.stdout, log[-4000:]
    limit = json.loads((out / "train_limit.json").read_text())
    every_core = limit["limits"][str(limit["cores_given"])]
    assert every_core["images_per_s"] > 0 and [row["workers"] for row in limit["loops"]] == [0], limit
    assert limit["loops"][0]["images_per_s"] > 0 and limit["loops"][0]["threads"] == limit["cores_given"], limit
    rows = json.loads((out / "raw_model.json").read_text())
    assert {r["backend"] for r in rows} >= {"torch fp32", "onnxruntime CPU"} and all(r["p50_ms"] > 0 for r in rows)
    assert all("rehearsal" in r["card"] for r in rows)
    trained = json.loads((out / "train.json").read_text())
    assert trained["epochs"] == 1 and trained["version"] == "1"
    study = json.loads((out / "study.json").read_text())
    assert study["counts"]["failed"] == 0 and study["best_config"]
    if shutil.which("wrk"):
        assert "serving: done in" in run.stdout, log[-4000:]
        serving = json.loads((out / "serve.json").read_text())
        assert serving, serving
    else:
        assert "serving: skipped, missing" in run.stdout

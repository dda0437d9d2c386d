"""Learning from production, its first half with real parts: `facemask watch` keeps the frames
its `sampling:` section asks for (the simulated GPU over a video whose faces are where it
reports them: one of each class, the rare one among them), `facemask pool export` makes a
labelling task of them, and `facemask data prepare` reads the task back as training data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.integration.events.test_event_delivery import pattern_video
from tests.streams import rtsp_missing

pytestmark = pytest.mark.integration
FACEMASK = [sys.executable, "-m", "facemask.cli"]


def test_a_watch_keeps_the_rare_class_once_per_person_and_the_export_is_training_data(tmp_path):
    if rtsp_missing() and not __import__("shutil").which("ffmpeg"):
        pytest.skip("ffmpeg is not installed (Debian's ffmpeg; .ci/run installs it)")
    video, _ = pattern_video(tmp_path / "door.mkv")
    listing = tmp_path / "cameras.yaml"
    sampling = {"faces": "keep", "random_share": 0.0, "band": 0.05}
    listing.write_text(yaml.safe_dump({"sampling": sampling, "cameras": [{"id": "door", "url": str(video)}]}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    command = [*FACEMASK, "watch", str(listing), "--out", str(out), "--backend", "simulated-gpu", "--no-page"]
    run = subprocess.run([*command, "--max-seconds", "12"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    samples = json.loads((out / "summary.json").read_text())["samples"]
    # The badly masked face (0.62, rare) is kept; its tracked person is not kept again however
    # many frames show it; the others are sure (0.91, 0.84) and common: never a reason alone.
    assert samples["reason_rare"] >= 1 and samples["duplicate"] >= 10 and "reason_uncertain" not in samples
    assert samples["written"] == samples["kept"] and samples.get("dropped", 0) == 0
    images = sorted((out / "samples" / "door").glob("*.jpg"))
    assert len(images) == samples["kept"]

    task = tmp_path / "task"
    export = subprocess.run(
        [*FACEMASK, "pool", "export", str(out / "samples"), "--to", str(task), "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert export.returncode == 0 and json.loads(export.stdout)["exported"] == len(images), export.stderr
    prepared = subprocess.run(
        [*FACEMASK, "data", "prepare", "--source", str(task), "--format", "voc", "--out", str(tmp_path / "ds")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-2000:]
    labels = list((tmp_path / "ds").rglob("labels/*/*.txt")) or list((tmp_path / "ds").rglob("*.txt"))
    classes = sorted({line.split()[0] for path in labels for line in path.read_text().splitlines() if line.strip()})
    assert classes == ["0", "1", "2"]  # every class of the pre-labels came through the reader and the class map

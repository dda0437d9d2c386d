"""The retrain job (jobs/retrain.py) run as `ray job submit` runs its entrypoint: newly labelled
images merged into the base set, a new dataset version that keeps the test split, a challenger
trained and registered, both versions scored on that split, and the gate's answer carried out
(a canary, or nothing promoted with the reason in one line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
FACEMASK = [sys.executable, "-c", "from facemask.cli import main; main()"]
TINY = ["--weights", "yolo26n.yaml", "--imgsz", "160", "--batch", "8", "--device", "cpu", "plots=False"]


def run(command: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def labelled_folder(source: Path, out: Path, names: list[str]) -> Path:
    """Some of `source`'s images as a labeller returns them (a VOC folder), renamed: new photos."""
    for kind in ("annotations", "images"):
        (out / kind).mkdir(parents=True)
    for name in names:
        image = next((source / "images").glob(f"{name}.*"))
        shutil.copy(image, out / "images" / f"new-{image.name}")
        xml = (source / "annotations" / f"{name}.xml").read_text()
        (out / "annotations" / f"new-{name}.xml").write_text(xml.replace("<filename>", "<filename>new-", 1))
    return out


def test_the_retrain_job_trains_a_challenger_on_a_new_version_and_carries_out_the_gate(synth_source, tmp_path):
    from facemask.quality.rollout import challenger_alias
    from facemask.tracking.registry import alias_version, model_version

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "FACEMASK_HOME": str(tmp_path / "home")}
    tiny = [*TINY, "--project", str(tmp_path / "runs")]
    names = sorted(p.stem for p in (synth_source / "annotations").glob("*.xml"))
    base = tmp_path / "base"
    for kind in ("annotations", "images"):
        (base / kind).mkdir(parents=True)
        for path in (synth_source / kind).iterdir():
            if path.stem in names[:-6]:
                (base / kind / path.name).symlink_to(path)
    new = labelled_folder(synth_source, tmp_path / "labelled", names[-6:])
    v1 = tmp_path / "v1"
    run([*FACEMASK, "data", "prepare", "--source", str(base), "--out", str(v1), "--engine", "local"], env)
    trained = json.loads(
        run(
            [*FACEMASK, "train", "--data", str(v1 / "data.yaml"), *tiny, "--epochs", "1", "--register", "--json"], env
        ).stdout
    )
    run([*FACEMASK, "promote", "--model-uri", trained["model_uri"], "--force"], env)  # the first champion

    job = [sys.executable, "jobs/retrain.py", "--base", str(base), "--labelled", str(new), "--keep-splits", str(v1)]
    job += ["--out", str(tmp_path / "v2"), "--imgsz", "160", "--device", "cpu", "--canary", "25", "--", *tiny]
    done = run([*job, "--epochs", "2"], env)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])

    merged = json.loads(lines[0].split("merged: ", 1)[1].rsplit(" images linked", 1)[0])  # the job's first line
    assert merged == {str(base): len(names) - 6, str(new): 6}
    v2 = tmp_path / "v2" / "data"
    kept = json.loads((v2 / "manifest.json").read_text())["kept_splits"]
    assert kept["added"]["test"] == 0 and sum(kept["added"].values()) == 6
    champion = alias_version("facemask-detector", "champion", store)
    challenger = model_version(result["challenger"], store)
    assert champion.version != challenger.version  # the champion stays until a promotion without --canary
    # Both scored on the same test photos: the gate compared them, paired.
    assert challenger.tags["test.data.split"] == champion.tags["test.data.split"]
    canary = alias_version("facemask-detector", challenger_alias("champion"), store)
    if result["outcome"] == "canary":
        assert canary is not None and canary.version == challenger.version
    else:
        assert result["outcome"] == "refused" and canary is None
        assert f"not promoted: {result['reason']}" in done.stdout and result["reason"]

"""A new dataset version from the base set plus newly labelled images (`data prepare
--keep-splits`): every image keeps its split, new ones go to train and val only, the test
split neither gains nor loses an image, and a version that would lose a test image is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from facemask.core.errors import ConfigError
from facemask.data.augment import AugmentConfig
from facemask.data.pipeline import PrepareConfig, prepare

pytestmark = pytest.mark.integration
NO_PASTES = AugmentConfig(balance_ratio=0.0)


def version(source: Path, out: Path, keep: Path | None = None) -> dict:
    cfg = PrepareConfig(source=source, out=out, engine="local", plots=False, augment=NO_PASTES, keep_splits=keep)
    return prepare(cfg).manifest


def add_labelled(new: Path, base: Path) -> None:
    """Newly labelled images (as `facemask pool export` and a labeller give them) join the base set."""
    for kind in ("annotations", "images"):
        for path in (new / kind).iterdir():
            shutil.copy(path, base / kind / f"new-{path.name}")
    for xml in (base / "annotations").glob("new-*.xml"):  # each annotation names its renamed image
        text = xml.read_text()
        xml.write_text(text.replace("<filename>", "<filename>new-", 1))


def test_a_new_version_keeps_every_split_and_the_test_split_whole(tmp_path):
    from facemask.data.synth import synthesize

    base = tmp_path / "base"
    synthesize(base, images=30, seed=3)
    v1 = version(base, tmp_path / "v1")
    before = json.loads((tmp_path / "v1" / "splits.json").read_text())
    new = tmp_path / "new"
    synthesize(new, images=12, seed=4)
    add_labelled(new, base)
    v2 = version(base, tmp_path / "v2", keep=tmp_path / "v1")
    after = json.loads((tmp_path / "v2" / "splits.json").read_text())
    assert after["test"] == before["test"]  # neither gained nor lost
    for split in ("train", "val"):
        assert set(before[split]) <= set(after[split])
    added = {p for s in ("train", "val") for p in set(after[s]) - set(before[s])}
    assert len(added) == 12 and all(Path(p).name.startswith("new-") for p in added)
    kept = v2["kept_splits"]
    assert kept["kept"] == {s: len(before[s]) for s in before} and sum(kept["added"].values()) == 12
    assert kept["added"]["test"] == 0 and kept["from"].endswith("splits.json")
    assert v2["fingerprint"] != v1["fingerprint"]
    # So the two versions' models compare: the test split's own hash (the `test.data.split` tag
    # evaluation sets, which the promotion gate accepts as the same data) agrees; train's does not.
    from facemask.quality.promotion import same_test_data
    from facemask.quality.scoring import split_fingerprint

    tests = [split_fingerprint(tmp_path / v / "data.yaml", "test") for v in ("v1", "v2")]
    assert tests[0] and tests[0] == tests[1]
    assert split_fingerprint(tmp_path / "v1" / "data.yaml", "train") != split_fingerprint(
        tmp_path / "v2" / "data.yaml", "train"
    )
    v1_tags = {"test.data.fingerprint": v1["fingerprint"], "test.data.split": tests[0]}
    assert same_test_data(v1_tags, {"test.data.fingerprint": v2["fingerprint"], "test.data.split": tests[1]})
    assert not same_test_data(v1_tags, {"test.data.fingerprint": v2["fingerprint"], "test.data.split": "other"})
    assert not same_test_data(v1_tags, {"test.data.fingerprint": v2["fingerprint"]})  # evaluated before this release

    # A version whose source lost a test image is refused, naming it.
    gone = before["test"][0]
    (base / gone).unlink()
    with pytest.raises(ConfigError, match="the test split would lose 1 images") as caught:
        version(base, tmp_path / "v3", keep=tmp_path / "v2" / "splits.json")
    assert Path(gone).name in str(caught.value)


def test_lineage_says_which_dataset_version_trained_which_registered_version(tmp_path, tracking):
    """Two dataset versions (v2 keeps v1's splits and adds labelled images), a registered version
    trained on each as training logs it (the dataset input and its profile), then `facemask
    lineage` from the registry alone: each version's dataset, and v2 built on v1."""
    from mlflow import MlflowClient

    from facemask.cli import main
    from facemask.core.manifest import dataset_profile
    from facemask.data.synth import synthesize
    from facemask.tracking.runs import dataset_input

    base = tmp_path / "base"
    synthesize(base, images=24, seed=5)
    v1 = version(base, tmp_path / "v1")
    new = tmp_path / "new"
    synthesize(new, images=6, seed=6)
    add_labelled(new, base)
    v2 = version(base, tmp_path / "v2", keep=tmp_path / "v1")
    assert v2["kept_splits"]["added"]["train"] + v2["kept_splits"]["added"]["val"] == 6

    store = MlflowClient(tracking["uri"])
    experiment = store.create_experiment(tracking["experiment"])
    name = f"lineage-{tmp_path.name}"
    store.create_registered_model(name)
    for folder, manifest in (("v1", v1), ("v2", v2)):
        run = store.create_run(experiment).info.run_id
        data = tmp_path / folder / "data.yaml"
        store.log_inputs(
            run, datasets=[dataset_input(str(data), folder, manifest["fingerprint"], "training", dataset_profile(data))]
        )
        store.set_terminated(run)
        store.create_model_version(name, f"runs:/{run}/model", run)
    store.set_registered_model_alias(name, "champion", "2")

    result = CliRunner().invoke(main, ["lineage", "--registered-model", name, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [(v["version"], v["dataset"], v["aliases"]) for v in found["versions"]] == [
        ("1", v1["fingerprint"][:36], []),
        ("2", v2["fingerprint"][:36], ["champion"]),
    ]
    datasets = {d["digest"]: d for d in found["datasets"]}
    assert datasets[v1["fingerprint"][:36]]["built_on"] is None  # a base set
    assert datasets[v2["fingerprint"][:36]]["built_on"] == v1["fingerprint"][:36]
    assert datasets[v2["fingerprint"][:36]]["added"] == v2["kept_splits"]["added"]
    text = CliRunner().invoke(main, ["lineage", "--registered-model", name], catch_exceptions=False).output
    rows = [line.split()[:2] for line in text.splitlines()]
    assert "@champion" in text and [v2["fingerprint"][:12], v1["fingerprint"][:12]] in rows, text

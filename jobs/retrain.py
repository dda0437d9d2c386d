"""Entrypoint: newly labelled images become a challenger, gated against the champion, then a canary.

    ray job submit --working-dir . -- python jobs/retrain.py --base DIR --labelled DIR [--labelled DIR ...] \\
        --keep-splits PREVIOUS --out DIR [--alias champion] [--canary 10] [--imgsz 640] \\
        -- [facemask train options]

In order, each step as its command does it (docs/learning.md, "The retrain job"):
1. **Merge**: the base set (Pascal VOC: annotations/ and images/) and each labelled folder (a
   `facemask pool export --format voc`, corrected) into OUT/source, as links: nothing is
   copied. An image name in two folders with other bytes stops the job, naming both.
2. **A new dataset version**: `facemask data prepare --keep-splits PREVIOUS`: every image keeps
   the split it had, the new ones go to train and val, the test split stays the same photos.
3. **A challenger**: `facemask train --data OUT/data/data.yaml --register` with the options after
   `--` (registered and calibrated as every registered training is).
4. **Both scored on the fixed test split**: `facemask evaluate` of the challenger, and of the
   champion when its tags do not show that split already.
5. **The gate, then a canary**: `facemask promote --canary P`: a challenger whose paired gain
   clears zero takes P% of the alias's traffic as @challenger (`facemask promote` without
   --canary makes it the champion; `facemask rollback` ends it). One that does not promotes
   nothing, and the job says why in one line. Either way the job succeeds: a refusal is the
   gate working, not a failure. With no champion yet, the challenger becomes it.

The last line is the outcome as JSON (`{"outcome": "canary" | "champion" | "refused", ...}`).
A retried job (a RayJob's backoffLimit) starts again from the merge: the merge and the
preparation give the same dataset, and a second challenger is trained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        argv, train = argv[:cut], argv[cut + 1 :]
    else:
        train = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the base set: a VOC folder (annotations/, images/)")
    parser.add_argument("--labelled", type=Path, action="append", required=True, help="a labelled VOC folder")
    parser.add_argument("--keep-splits", type=Path, required=True, help="the prepared version whose splits are kept")
    parser.add_argument("--out", type=Path, required=True, help="OUT/source (links) and OUT/data (the new version)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--canary", type=float, default=10.0, help="the challenger's share of traffic, in percent")
    parser.add_argument("--imgsz", type=int, default=640, help="both versions are scored at this size")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    forbidden = {"--data", "--register", "--json"} & set(train)
    if forbidden:
        parser.error(f"after `--`: {', '.join(sorted(forbidden))} is the job's to set; give the other train options")
    return args, train


def merge(base: Path, labelled: list[Path], out: Path) -> dict[str, int]:
    """Links to every annotation and image of `base` and the labelled folders in out/annotations
    and out/images; a name taken twice by different bytes is refused. How many came from each."""
    import filecmp

    counts: dict[str, int] = {}
    for kind in ("annotations", "images"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for folder in [base, *labelled]:
        if not (folder / "annotations").is_dir() or not (folder / "images").is_dir():
            raise SystemExit(
                f"{folder}: expected a Pascal VOC folder with annotations/ and images/ "
                "(`facemask pool export --format voc` writes one)"
            )
        added = 0
        for kind, wanted in (("annotations", {".xml"}), ("images", IMAGE_SUFFIXES)):
            for path in sorted((folder / kind).iterdir()):
                if path.suffix.lower() not in wanted:
                    continue
                link = out / kind / path.name
                if link.is_symlink() or link.exists():
                    if link.resolve() == path.resolve() or filecmp.cmp(link, path, shallow=False):
                        continue
                    raise SystemExit(
                        f"{path}: {kind[:-1]} name {path.name} is also in {link.resolve().parent.parent} with "
                        "other content; rename one of them (the name is the image's identity across versions)"
                    )
                link.symlink_to(path.resolve())
                added += kind == "images"
        counts[str(folder)] = added
    return counts


def facemask(*args: str, capture: bool = False) -> str:
    """One `facemask` command in a process of its own; its JSON (with --json) or nothing. A
    failure stops the job with the command's own exit code."""
    command = [sys.executable, "-c", "from facemask.cli import main; main()", *args]
    print("$ facemask " + " ".join(args), flush=True)
    run = subprocess.run(command, stdout=subprocess.PIPE if capture else None, text=True)
    if run.returncode != 0:
        raise SystemExit(run.returncode)
    return run.stdout if capture else ""


def main(argv: list[str] | None = None) -> dict:
    from facemask.quality.scoring import split_fingerprint
    from facemask.tracking import default_tracking_uri
    from facemask.tracking.registry import alias_version

    args, train = parse(sys.argv[1:] if argv is None else argv)
    source, data = args.out / "source", args.out / "data"
    print(f"merged: {json.dumps(merge(args.base, args.labelled, source))} images linked", flush=True)
    facemask("data", "prepare", "--source", str(source), "--out", str(data), "--keep-splits", str(args.keep_splits))
    data_yaml = data / "data.yaml"
    trained = json.loads(facemask("train", "--data", str(data_yaml), *train, "--register", "--json", capture=True))
    challenger = trained["model_uri"]  # models:/facemask-detector/N
    if not challenger:
        raise SystemExit(f"the challenger was trained (run {trained['run_id']}) but not registered; see its log above")
    name = challenger.split("/")[1]
    score = ("--imgsz", str(args.imgsz), "--device", args.device)
    facemask("evaluate", "--model-uri", challenger, "--data", str(data_yaml), *score)
    champion = alias_version(name, args.alias, default_tracking_uri())
    if champion is not None and (champion.tags or {}).get("test.data.split") != split_fingerprint(data_yaml, "test"):
        facemask("evaluate", "--model-uri", f"models:/{name}/{champion.version}", "--data", str(data_yaml), *score)
    gate = ["--canary", f"{args.canary:g}"] if champion is not None else []
    decision = json.loads(
        facemask("promote", "--model-uri", challenger, "--alias", args.alias, *gate, "--json", capture=True)
    )
    outcome = "refused" if not decision["promoted"] else ("canary" if champion is not None else "champion")
    result = {"outcome": outcome, "challenger": challenger, "reason": decision.get("reason"), "data": str(data_yaml)}
    if outcome == "refused":
        print(f"not promoted: {decision.get('reason')}", flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

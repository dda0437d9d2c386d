"""Entrypoint: a whole study as one job, prepared data included.

    ray job submit -- python jobs/study.py --source DIR --out DIR [prepare options] -- [tune options]

Runs `facemask data prepare` with the options before `--`, then `facemask tune --auto-resume
--data OUT/data.yaml` with those after it, in the job's own process on the cluster. One
command, so a runner that pastes it into a shell (KubeRay's submitter runs `ray job submit
... -- <entrypoint> ;` under bash) submits all of it as the job: no `&&` or `$(...)` left for
the submitter's shell to run. A job run again (a retried RayJob) prepares the same data again
(seeded) and resumes the study its --storage/--name holds, or reports it finished.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import main  # noqa: E402


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(prepare's options, tune's options), split at the first `--`; tune gets --data OUT/data.yaml
    unless it names its own."""
    if "--" not in argv:
        raise SystemExit(
            "usage: study.py --source DIR --out DIR [prepare options] -- [tune options]: "
            "put `--` between the options of `facemask data prepare` and those of `facemask tune`"
        )
    cut = argv.index("--")
    prepare, tune = argv[:cut], argv[cut + 1 :]
    if "--out" not in prepare:
        raise SystemExit("study.py: --out DIR is required before `--` (where the prepared data goes)")
    out = prepare[prepare.index("--out") + 1]
    if "--data" not in tune:
        tune = ["--data", str(Path(out) / "data.yaml"), *tune]
    return prepare, tune


if __name__ == "__main__":
    prepare, tune = split_arguments(sys.argv[1:])
    # Loaded before Ray starts: once ray.init() has run, importing torch can abort (facemask.core.runtime.init_ray).
    import torch  # noqa: F401

    try:
        main(["data", "prepare", *prepare])
    except SystemExit as exc:  # a command always ends in sys.exit: 0 goes on to the study
        if exc.code not in (0, None):
            raise
    main(["tune", "--auto-resume", *tune])

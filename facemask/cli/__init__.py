"""The `facemask` command. Each command parses, sets up global state, calls one core function.

Every option's default comes from the stage's config dataclass in `facemask.core.settings`.
A stage module is imported inside its command: the stages pull in numpy, Pillow, Ray and
Ultralytics, and `facemask --help` must stay fast. A `FacemaskError` (a mistake the user can
fix) prints one line and exits 2; anything else is a bug and says so. Every command that
produces a result prints it as one JSON object with `--json` (docs/cli.md documents each
shape and the exit codes).

    base      the group, exit codes, --json, former option names, the stop line, the results footer
    data      data synth, fetch, prepare; how a labelled source is read
    train     train, tune
    quality   evaluate, compare, promote, rollback
    serve     serve, query
    predict   export, predict
    watch     watch (many cameras)
"""

from facemask.cli import data, predict, quality, serve, train, watch  # noqa: F401 - each registers its commands
from facemask.cli.base import EXIT_FAILURE, EXIT_NEGATIVE, EXIT_USAGE, main, results_footer, stop_summary
from facemask.cli.serve import detections_table
from facemask.cli.train import study_table

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NEGATIVE",
    "EXIT_USAGE",
    "detections_table",
    "main",
    "results_footer",
    "stop_summary",
    "study_table",
]

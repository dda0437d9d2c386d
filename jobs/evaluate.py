"""Entrypoint: `ray job submit --working-dir . -- python jobs/evaluate.py ...` (options as `facemask evaluate`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])

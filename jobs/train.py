"""Entrypoint: `ray job submit --working-dir . -- python jobs/train.py ...` (options as `facemask train`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])

"""Entrypoint: `ray job submit --working-dir . -- python jobs/watch.py cameras.yaml --out DIR ...` (options as
`facemask watch`). `ray job stop` ends it within seconds: every camera's partial window is written first."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["watch", *sys.argv[1:]])

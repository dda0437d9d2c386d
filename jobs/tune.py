"""Entrypoint: `ray job submit --working-dir . -- python jobs/tune.py --data DATA_YAML ...`.

Takes the same options as `facemask tune`; joins the cluster in RAY_ADDRESS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["tune", *sys.argv[1:]])

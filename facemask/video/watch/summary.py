"""What a watch leaves when it ends: its totals per camera, as summary.json holds them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class WatchResult:
    seconds: float
    cameras: dict[str, dict]
    windows: int
    log: Path
    summary: Path
    stopped_by: str | None = None
    lost_batches: int = 0  # batches that failed: the detector died (Ray restarted it), the model raised
    events: dict | None = None  # violation events: started, ended, delivery (None: events are off)
    samples: dict | None = None  # frames kept for labelling, by outcome and reason (None: sampling is off)
    drift: dict | None = None  # camera -> PSI of its class mix and scores against val (None: too few answers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "cameras": self.cameras,
            "windows": self.windows,
            "lost_batches": self.lost_batches,
            "files": {"log": str(self.log), "summary": str(self.summary)},
            "stopped_by": self.stopped_by,
            "events": self.events,
            "samples": self.samples,
            "drift": self.drift,
        }


def camera_totals(w, seconds: float) -> dict[str, Any]:
    """One camera's frames, latency percentiles and CPU per frame by stage, for summary.json
    (`w`: the runner's `Watched`)."""
    status, latencies = w.status, np.array(w.latencies_ms or [np.nan])
    decoded = max(1, status.get("decoded", 0))
    return {
        "state": status.get("state"),
        "processed": w.processed,
        "dropped": status.get("dropped", 0),
        "decoded": status.get("decoded", 0),
        "reconnects": status.get("reconnects", 0),
        "reader_restarts": status.get("restarts", 0),
        "processed_fps": round(w.processed / seconds, 2) if seconds else 0.0,
        "latency_ms": {"p50": _round(np.nanpercentile(latencies, 50)), "p99": _round(np.nanpercentile(latencies, 99))},
        "ms_per_frame": {
            "decode": round(status.get("decode_ms", 0.0) / decoded, 2),
            "resize": round(status.get("resize_ms", 0.0) / max(1, w.processed), 2),
            "tracking": round(w.tracking_ms / max(1, w.processed), 2),
        },
    }


def _round(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 1)

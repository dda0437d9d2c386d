"""How good a version is, and who answers:

scoring     any detector scored from its raw boxes: AP (matched as Ultralytics' validator does), P/R at thresholds
bootstrap   AP with bootstrap intervals from stored per-image predictions; paired differences
evaluate    evaluation of a split or your own labelled photos, and compare
calibrate   the operating point chosen on val and stored with the version
ensemble    versions fused into one registered version
promotion   the paired-bootstrap promotion gate
rollout     an alias's holder, a canary's share, the history a rollback walks
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__,
    {
        "evaluate": "evaluate",
        "compare": "evaluate",
        "calibrate": "calibrate",
        "promote": "promotion",
        "bootstrap": "bootstrap",
        "BootstrapResult": "bootstrap",
        "Interval": "bootstrap",
    },
)

"""The leaves every stage builds on; each imports only the leaves before it, in this order:

classes          the one class map
operating_point  a version's size and per-class thresholds, as its tag holds them
errors           FacemaskError and every error a user can cause
modelref         model URIs, ModelInfo, registry names
lifecycle        stop signals and exit codes, a bounded stop, the processes below this one
supervisor       keeps a server running: started again when it ends, with a backoff (cluster.yaml's MLflow)
ports            a server's port: a documented one reserved machine-wide, else one no connection takes
runtime          Ultralytics offline, devices, CPUs given, Ray init, the node's Serve settings
manifest         manifest.json and the data fingerprint
settings         every stage's config dataclass and defaults
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__,
    {
        "CLASS_NAMES": "classes",
        "ConfigError": "errors",
        "FacemaskError": "errors",
        "OperatingPoint": "operating_point",
        "TrainConfig": "settings",
        "StudyConfig": "settings",
        "PrepareConfig": "settings",
        "ServeConfig": "settings",
        "cpus_given": "runtime",
        "init_ray": "runtime",
    },
)

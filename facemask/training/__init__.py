"""Training, on one process or many:

train         train(): one YOLO training, tracked, on the CPUs it was given
distributed   train_distributed(): one model on N Ray Train workers (DDP)
space         the study's search space YAML, checked, as Ray Tune's
resources     what a trial asks of the cluster, how many fit, shapes refused early
tune          tune(): Ray Tune + Optuna + ASHA, the trial and the driver
importance    which settings mattered: fANOVA over the study's trials
cost          what a model costs a frame on a target (batch-1 latency), measured before a study's trials
summary       a finished study read back: trial rows and statuses, plots, the best, the Pareto front
finish        the best configuration (or the front) retrained, scored on test with intervals, registered and gated
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__, {"train": "train", "TrainResult": "train", "train_distributed": "distributed", "tune": "tune"}
)

"""Training: config, loop, the torch twin, and whole runs."""

from .config import TrainConfig
from .loop import EpochStats, evaluate, fit, make_loss, mlp, train_step
from .run import RunResult, run

__all__ = ["EpochStats", "RunResult", "TrainConfig", "evaluate", "fit", "make_loss", "mlp", "run", "train_step"]

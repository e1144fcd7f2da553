"""Training: config, loop, the torch twin, and whole runs."""

from .config import TrainConfig
from ..models import cnn, mlp
from .loop import EpochStats, evaluate, fit, make_loss, train_step
from .run import RunResult, run

__all__ = ["EpochStats", "RunResult", "TrainConfig", "cnn", "evaluate", "fit", "make_loss", "mlp", "run", "train_step"]

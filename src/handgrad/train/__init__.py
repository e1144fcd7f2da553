"""Training: config, Learner and callbacks, run folders, the torch twin, and whole runs."""

from ..models import cnn, mlp
from .config import TrainConfig
from .learner import Callback, CancelBatch, CancelEpoch, CancelFit, Learner
from .fit import fit
from .loop import EpochStats, evaluate, make_loss
from .run import RunResult, run

__all__ = ["Callback", "CancelBatch", "CancelEpoch", "CancelFit", "EpochStats", "Learner", "RunResult",
           "TrainConfig", "cnn", "evaluate", "fit", "make_loss", "mlp", "run"]

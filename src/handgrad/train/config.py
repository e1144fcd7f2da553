"""The typed configuration behind `handgrad train`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

LOSSES = ("cross-entropy", "mse")
MODELS = ("mlp", "cnn")
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved with the run and printed at its start."""

    dataset: str = "auto"  # mnist | fashion-mnist | auto (mnist where found or downloadable, else fashion-mnist)
    data: str | None = None  # explicit file or folder
    model: str = "mlp"  # mlp | cnn
    hidden: list[int] = field(default_factory=lambda: [50])  # mlp: the seeds' 784-50-10
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # cnn: stem width, then one block per width
    loss: str = "cross-entropy"  # or "mse", as in the seeds: one output regressing the class index
    epochs: int = 5
    bs: int | None = None  # default: 64 for the MLP (the seeds'), 128 for the CNN
    lr: float | None = None  # default: 0.1 with cross-entropy, 0.01 with mse
    momentum: float | None = None  # default: 0 for the MLP (the seeds' plain SGD), 0.9 for the CNN
    weight_decay: float | None = None  # default: 0 for the MLP, 5e-4 for the CNN
    schedule: str | None = None  # constant | cosine; default: constant for the MLP, cosine for the CNN
    seed: int = 42
    device: str = "cpu"
    init: str = "kaiming"
    check: bool = True  # check hand-written gradients on the first batch before training
    torch_twin: bool = False  # also train the torch.nn twin, same weights and batches, and compare
    download: bool = True
    normalize: bool = True  # standardise images with the training set's mean and std
    subset: int | None = None  # train on the first N training images only (quick runs)
    stats: str | None = None  # write a PNG of per-layer activation statistics over training here

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"--channels must be positive, got {self.channels}")
        if self.schedule not in (None, *SCHEDULES):
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.bs is not None and self.bs < 1:
            raise ValueError(f"--bs must be a positive integer, got {self.bs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"--hidden sizes must be positive, got {self.hidden}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"--subset must be positive, got {self.subset}")

    @property
    def batch_size(self) -> int:
        if self.bs is not None:
            return self.bs
        return 128 if self.model == "cnn" else 64

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 if self.loss == "mse" else 0.1

    @property
    def sgd_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.model == "cnn" else 0.0

    @property
    def sgd_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.model == "cnn" else 0.0

    @property
    def lr_schedule(self) -> str:
        if self.schedule is not None:
            return self.schedule
        return "cosine" if self.model == "cnn" else "constant"

    def to_dict(self) -> dict:
        return asdict(self)

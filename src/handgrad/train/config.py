"""The typed configuration behind `handgrad train`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

LOSSES = ("cross-entropy", "mse")


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved with the run and printed at its start."""

    dataset: str = "auto"  # mnist | fashion-mnist | auto (mnist where found or downloadable, else fashion-mnist)
    data: str | None = None  # explicit file or folder
    hidden: list[int] = field(default_factory=lambda: [50])  # the seeds' 784-50-10
    loss: str = "cross-entropy"  # or "mse", as in the seeds: one output regressing the class index
    epochs: int = 5
    bs: int = 64
    lr: float | None = None  # default: 0.1 for cross-entropy, 0.01 for mse
    seed: int = 42
    device: str = "cpu"
    init: str = "kaiming"
    check: bool = True  # check hand-written gradients on the first batch before training
    torch_twin: bool = False  # also train the torch.nn twin, same weights and batches, and compare
    download: bool = True
    normalize: bool = True  # standardise images with the training set's mean and std
    subset: int | None = None  # train on the first N training images only (quick runs)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.bs < 1:
            raise ValueError(f"--bs must be a positive integer, got {self.bs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"--hidden sizes must be positive, got {self.hidden}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"--subset must be positive, got {self.subset}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 if self.loss == "cross-entropy" else 0.01

    def to_dict(self) -> dict:
        return asdict(self)

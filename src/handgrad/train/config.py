"""The typed configuration behind `handgrad train`, saved in every run folder."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields

LOSSES = ("cross-entropy", "mse")
IMAGE_MODELS = ("mlp", "cnn")
TEXT_MODELS = ("gpt", "lstm", "rnn")  # character models: next-character logits (N, T, vocab)
MODELS = IMAGE_MODELS + TEXT_MODELS  # or a class of the user's own: see is_target
DATASETS = ("auto", "mnist", "fashion-mnist")
TEXT_DATASETS = ("fortunes", "words")  # or text:PATH
MAX_STEPS = 10**9
MAX_WIDTH = 1 << 16  # a layer width past this is a typo (the parameter count is checked against memory too)
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_LR = 1e6  # --lr (and lr-find's range) past this is a typo
LR_FIND_START, LR_FIND_END = 1e-6, 10.0  # lr-find's default range
INITS = ("kaiming", "randn", "torch")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "one-cycle", "cosine", "step")


# what a run's weights and optimizer state were trained under: config.json must still say the same when a checkpoint
# is resumed or loaded (fields a resume may change, or that only say where data or processes are, are not here)
TRAINED_UNDER = ("model", "model_args", "hidden", "channels", "block_size", "d_model", "n_layer", "n_head",
                 "hidden_size", "recompute", "checkpoint", "steps", "eval_every", "loss", "bs", "opt", "lr", "momentum",
                 "weight_decay", "schedule", "warmup", "clip", "seed", "init", "normalize", "subset")


def is_text_dataset(name: str) -> bool:
    return name in TEXT_DATASETS or (name.startswith("text:") and len(name) > 5)


def is_target(model: str) -> bool:
    """Whether `model` names a class of the user's own (`file.py:ClassName`, `package.module:ClassName`)."""
    where, sep, name = model.rpartition(":")
    return bool(sep and where and name)


@dataclass
class TrainConfig:
    """Everything one training run depends on. Fields left None take the defaults of the model / optimizer."""

    dataset: str = "auto"  # mnist | fashion-mnist | auto (mnist where found or downloadable, else fashion-mnist);
    # for the text models: fortunes | words | text:PATH
    data: str | None = None  # explicit file or folder
    model: str = "mlp"  # mlp | cnn | gpt | lstm | rnn | a class of your own: /absolute/path/file.py:ClassName or package.module:ClassName
    model_args: dict | None = None  # that class's constructor arguments (--args, JSON)
    model_source: str | None = None  # sha256 of that class's source file when the run was trained
    hidden: list[int] = field(default_factory=lambda: [50])  # mlp: the seeds' 784-50-10
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # cnn: stem width, then one block per width
    block_size: int = 128  # text: characters a window holds (the GPT's context)
    d_model: int | None = None  # text: gpt width (default 128); lstm/rnn: embedding size (default 64)
    n_layer: int | None = None  # text: gpt blocks (default 4); lstm/rnn layers (default 2 / 1)
    n_head: int = 4  # gpt: attention heads
    hidden_size: int = 256  # lstm/rnn: hidden state size
    recompute: bool = True  # gpt: recompute the attention probabilities in backward instead of keeping them
    checkpoint: bool = False  # gpt: keep only each block's input, the block recomputed in backward (less memory)
    steps: int | None = None  # a cap on optimizer steps (any model); text models train for this many (default 1000)
    eval_every: int = 100  # text: steps between two validations (with a generated sample)
    loss: str = "cross-entropy"  # or "mse", as in the seeds: one output regressing the class index
    epochs: int = 5
    bs: int | None = None  # default: 64 for the MLP (the seeds'), 128 for the CNN
    opt: str | None = None  # sgd | adam | adamw; default sgd for the image models, adamw for the text models
    lr: float | None = None  # default: sgd 0.1 (0.01 with mse); adam/adamw 0.003 (peak lr with one-cycle)
    momentum: float | None = None  # sgd default: 0 for the MLP (the seeds' plain SGD), 0.9 for the CNN
    weight_decay: float | None = None  # default: sgd 0 for the MLP, 5e-4 for the CNN; adamw 0.01; adam 0
    schedule: str | None = None  # constant | one-cycle | cosine | step; default: constant (MLP), cosine (CNN)
    warmup: int | None = None  # cosine: warm-up steps (default 0; text models: a tenth of the steps, at most 100)
    clip: float | None = None  # clip the gradients' global norm (default none; text models 1.0)
    patience: int | None = None  # early stopping after this many epochs without a better valid loss
    seed: int = 42
    device: str = "cpu"
    init: str = "kaiming"
    check: bool = True  # check hand-written gradients on the first batch before training
    fused: bool = True  # the fused step where it applies (MLP with SGD without momentum; CNN)
    torch_twin: bool = False  # also train the torch.nn twin, same weights and batches, and compare
    download: bool = True
    normalize: bool = True  # standardise images with the training set's mean and std
    subset: int | None = None  # train on the first N training images only (quick runs)
    stats: str | None = None  # write a PNG of per-layer activation statistics over training here
    out: str | None = None  # run folder: config, metrics, checkpoints, plots
    save_every: int = 0  # also checkpoint every N batches (0: at the end of each epoch only)
    nproc: int = 1  # data-parallel processes on this machine (torch.distributed; bs stays the global batch)
    dist_timeout: float = 60.0  # seconds a collective may wait for a rank before training stops
    fingerprint: dict | None = None  # the data a run trained on (files' sizes and sha256), written by the run

    def validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(self.dataset in DATASETS or is_text_dataset(self.dataset), f"--dataset must be one of "
              f"{', '.join(DATASETS + TEXT_DATASETS)} or text:PATH, got {self.dataset!r}")
        check(self.model in MODELS or is_target(self.model), f"--model must be one of {', '.join(MODELS)} or a "
              f"class of your own as path/to/file.py:ClassName or package.module:ClassName, got {self.model!r}")
        check(self.model_args is None or is_target(self.model), "--args are the constructor arguments of a model "
              f"class of your own (TARGET); the {self.model} takes none")
        check(not (self.torch_twin and is_target(self.model)), "--torch-twin needs a built-in model (mlp or cnn): "
              "its twin is rebuilt from handgrad's layers in torch.nn, and a class of your own has no torch.nn "
              "counterpart")
        check(bool(self.channels) and all(1 <= c <= MAX_WIDTH for c in self.channels),
              f"--channels must be widths from 1 to {MAX_WIDTH}, got {self.channels}")
        if self.is_text:
            check(is_text_dataset(self.dataset), f"--model {self.model} is a character model: it trains on text "
                  f"(--dataset fortunes, words or text:PATH), got --dataset {self.dataset}")
            check(self.data is None, "--data is for image data; give a text file as --dataset text:PATH")
            check(self.loss == "cross-entropy", f"--model {self.model} predicts the next character with "
                  f"cross-entropy, got --loss {self.loss}")
            check(1 <= self.block_size <= MAX_WIDTH, f"--block-size must be from 1 to {MAX_WIDTH}, got "
                  f"{self.block_size}")
            check(self.d_model is None or 1 <= self.d_model <= MAX_WIDTH, f"--d-model must be from 1 to "
                  f"{MAX_WIDTH}, got {self.d_model}")
            check(self.n_layer is None or 1 <= self.n_layer <= 256, f"--n-layer must be from 1 to 256, got "
                  f"{self.n_layer}")
            check(1 <= self.hidden_size <= MAX_WIDTH, f"--hidden-size must be from 1 to {MAX_WIDTH}, got "
                  f"{self.hidden_size}")
            check(self.model != "gpt" or (1 <= self.n_head <= MAX_WIDTH and self.width % self.n_head == 0),
                  f"--n-head must divide --d-model ({self.width}), got {self.n_head}")
            check(1 <= self.eval_every <= MAX_STEPS, f"--eval-every must be from 1 to {MAX_STEPS}, got "
                  f"{self.eval_every}")
            check(self.batch_size >= self.nproc, f"--bs {self.batch_size}: each of the --nproc {self.nproc} "
                  f"processes needs at least one window of every batch")
        else:
            check(not is_text_dataset(self.dataset), f"--dataset {self.dataset} is text: train a character "
                  f"model on it (--model gpt, lstm or rnn), got --model {self.model}")
        check(self.steps is None or 1 <= self.steps <= MAX_STEPS, f"--steps must be from 1 to {MAX_STEPS}, got "
              f"{self.steps}")
        check(self.opt in (None, *OPTIMIZERS), f"--opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}")
        check(self.schedule in (None, *SCHEDULES), f"--schedule must be one of {', '.join(SCHEDULES)}, got "
              f"{self.schedule!r}")
        check(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        check(self.bs is None or self.bs >= 1, f"--bs must be a positive integer, got {self.bs}")
        check(self.lr is None or 0 < self.lr <= MAX_LR, f"--lr must be a positive number up to 1e6, got {self.lr}")
        check(bool(self.hidden) and all(1 <= h <= MAX_WIDTH for h in self.hidden),
              f"--hidden sizes must be from 1 to {MAX_WIDTH}, got {self.hidden}")
        check(self.momentum is None or 0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay is None or 0 <= self.weight_decay <= 1e6, f"--weight-decay must be a number from 0 "
              f"to 1e6, got "
              f"{self.weight_decay}")
        check(self.clip is None or self.clip > 0, f"--clip must be positive, got {self.clip}")
        check(self.patience is None or self.patience >= 1, f"--patience must be at least 1, got {self.patience}")
        check(self.warmup is None or self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}")
        check(self.warmup is None or self.warmup == 0 or self.lr_schedule == "cosine", f"--warmup is for the cosine "
              f"schedule; this run's is {self.lr_schedule}")
        check(self.warmup is None or self.total_steps is None or self.warmup < self.total_steps,
              f"--warmup {self.warmup}: the run takes {self.total_steps} steps; warm-up must end before")
        check(self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}")
        check(self.subset is None or self.subset >= 1, f"--subset must be positive, got {self.subset}")
        cores = os.cpu_count() or 1
        check(1 <= self.nproc <= max(cores, 8), f"--nproc must be from 1 to {max(cores, 8)} (this machine has {cores} "
              f"cores; across machines use torchrun), got {self.nproc}")
        check(0 <= self.seed < 2**32, f"--seed must be from 0 to 2**32 - 1, got {self.seed}")
        check(self.init in INITS, f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        check(re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
              f"--device: expected cpu, cuda or cuda:N, got {self.device!r}")
        check(self.clip is None or self.clip <= 1e30, f"--clip must be at most 1e30, got {self.clip}")
        check(0 < self.dist_timeout <= MAX_TIMEOUT, f"--dist-timeout must be seconds from 0 to {MAX_TIMEOUT:.0f} "
              f"(a week), got {self.dist_timeout}")
        check(not (self.torch_twin and self.nproc > 1), "--torch-twin trains in one process: leave out --nproc")

    @property
    def is_text(self) -> bool:
        """A character model trained on text (rather than an image model)."""
        return self.model in TEXT_MODELS

    @property
    def width(self) -> int:
        """Text models: the GPT's d_model, or the LSTM's / RNN's embedding size."""
        return self.d_model if self.d_model is not None else 128 if self.model == "gpt" else 64

    @property
    def layers(self) -> int:
        """Text models: GPT blocks or recurrent layers."""
        return self.n_layer if self.n_layer is not None else {"gpt": 4, "lstm": 2}.get(self.model, 1)

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps the run takes at most (text models: always a number)."""
        return self.steps if self.steps is not None else 1000 if self.is_text else None

    @property
    def optimizer(self) -> str:
        return self.opt if self.opt is not None else "adamw" if self.is_text else "sgd"

    @property
    def warmup_steps(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return min(100, (self.total_steps or 0) // 10) if self.is_text else 0

    @property
    def clip_norm(self) -> float | None:
        return self.clip if self.clip is not None else 1.0 if self.is_text else None

    @property
    def batch_size(self) -> int:
        if self.bs is not None:
            return self.bs
        return 128 if self.model == "cnn" else 32 if self.is_text else 64

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.optimizer in ("adam", "adamw"):
            return 3e-3
        return 0.01 if self.loss == "mse" else 0.1

    @property
    def sgd_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.model == "cnn" else 0.0

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        if self.optimizer == "adamw":
            return 0.01
        return 5e-4 if self.model == "cnn" and self.optimizer == "sgd" else 0.0

    @property
    def lr_schedule(self) -> str:
        if self.schedule is not None:
            return self.schedule
        return "cosine" if self.model == "cnn" or self.is_text else "constant"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

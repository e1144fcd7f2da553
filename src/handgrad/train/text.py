"""The character models' side of a run: the text and its windows, the model, samples of generated text.

`handgrad train --model gpt|lstm|rnn --dataset fortunes|words|text:PATH` trains for `--steps` optimizer steps on
seeded (batch, block) windows of the text's first nine tenths; every `--eval-every` steps (an "epoch" of the run
folder's metrics and checkpoints) valid_loss is measured in nats per character on fixed windows of the last
tenth, and a sample of generated text is printed. The vocabulary (the text's characters, sorted) is kept in the
run folder (vocab.json) and checked when the run is resumed, evaluated or sampled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data.text import TextData, TextLoader, check_vocab, load_text, valid_windows
from ..errors import DataError, UsageError
from ..models import char_lstm, char_rnn, gpt
from ..module import Module
from .config import TrainConfig
from .learner import Callback, Learner
from .runfolder import CHECKPOINT

VOCAB = "vocab.json"
SAMPLE_TOKENS = 200  # characters of each sample printed during training
MAX_TOKENS = 100_000  # `generate --tokens` past this is a typo


@dataclass
class TextRun:
    """A character model's data: the text, the seeded training windows and the fixed validation windows."""

    data: TextData
    train_dl: TextLoader
    x_valid: Tensor  # (k, block) ids
    y_valid: Tensor  # (k, block) the next characters


def read_vocab(folder: Path) -> str:
    """The vocabulary a text run trained with, from its run folder."""
    path = folder / VOCAB
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))["vocab"]
    except FileNotFoundError:
        raise DataError(f"{path}: missing; a text run's folder keeps its vocabulary there") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a vocabulary file ({type(e).__name__}: {e})") from None
    if not isinstance(vocab, str) or not vocab or len(set(vocab)) != len(vocab):
        raise DataError(f"{path}: expected a string of distinct characters under 'vocab'")
    return vocab


def run_vocab(folder: Path, meta: dict) -> str:
    """The vocabulary of a text run: its vocab.json, which must be the one its checkpoint (metadata `meta`) was
    trained with."""
    vocab = read_vocab(folder)
    if meta.get("vocab") != vocab:
        raise DataError(f"{folder / CHECKPOINT}: trained with another vocabulary than "
                        f"{folder / VOCAB}'s")
    return vocab


def write_vocab(folder: Path, data: TextData) -> None:
    (folder / VOCAB).write_text(json.dumps({"vocab": data.vocab, "dataset": data.name, "source": data.source},
                                           ensure_ascii=False) + "\n", encoding="utf-8")


def prepare_text(cfg: TrainConfig, device: torch.device, log: Callable[[str], None], rank: int = 0,
                 world_size: int = 1, vocab: str | None = None) -> TextRun:
    """The text cfg names, as training and validation windows on `device`. A run being resumed (`vocab`, and
    cfg.fingerprint) must get the text it trained on: another vocabulary or changed text is refused in one line.
    cfg then holds the text's absolute source and fingerprint."""
    data = load_text(cfg.dataset)
    if cfg.dataset.startswith("text:"):  # by absolute path: the run folder works from anywhere
        cfg.dataset = f"text:{data.source}"
        data.name = cfg.dataset
    where = f"{cfg.dataset}" if cfg.dataset.startswith("text:") else f"{cfg.dataset} ({data.source})"
    if vocab is not None:
        check_vocab(vocab, data, where)
    if cfg.fingerprint is not None and cfg.fingerprint != data.fingerprint():
        raise DataError(f"{where}: not the text this run trained on ({cfg.fingerprint.get('chars')} characters, "
                        f"sha256 {str(cfg.fingerprint.get('sha256'))[:12]}...; now {data.chars} characters, sha256 "
                        f"{data.sha256[:12]}...)")
    cfg.fingerprint = data.fingerprint()
    train_ids, valid_ids = data.train.to(device), data.valid.to(device)
    train_dl = TextLoader(train_ids, cfg.block_size, cfg.batch_size, cfg.eval_every, cfg.seed, rank, world_size,
                          where=f"{where}: its training part")
    x_valid, y_valid = valid_windows(valid_ids, cfg.block_size, where=f"{where}: its held-out tenth")
    return TextRun(data, train_dl, x_valid, y_valid)


def n_text_parameters(cfg: TrainConfig, vocab: int) -> int:
    """How many parameters cfg's character model has (counted before building it)."""
    d, layers = cfg.width, cfg.layers
    if cfg.model == "gpt":  # embeddings, per block 2 LayerNorms, qkv + out projections, the 4x MLP; final LayerNorm
        return (vocab + cfg.block_size) * d + layers * (12 * d * d + 13 * d) + 2 * d
    h, gates = cfg.hidden_size, 4 if cfg.model == "lstm" else 1
    recurrent = sum(gates * h * ((d if i == 0 else h) + h + 2) for i in range(layers))
    return vocab * d + recurrent + (h + 1) * vocab


def text_model(cfg: TrainConfig, vocab: int) -> tuple[Module, str]:
    """The character model cfg describes, initialised from cfg.seed, and its one-line name; UsageError when its
    parameters, gradients and optimizer state (16 bytes a parameter) would not fit in this machine's memory."""
    from .run import memory_bytes

    n, memory = n_text_parameters(cfg, vocab), memory_bytes()
    if 16 * n > memory:
        raise UsageError(f"the {cfg.model} would have {n:,} parameters ({16 * n / 2**30:.1f} GiB with gradients and "
                         f"optimizer state), more than this machine's {memory / 2**30:.1f} GiB of memory; choose a "
                         "smaller --d-model / --n-layer / --hidden-size")
    torch.manual_seed(cfg.seed)
    if cfg.model == "gpt":
        model = gpt(vocab, cfg.layers, cfg.n_head, cfg.width, cfg.block_size, recompute=cfg.recompute,
                    checkpoint=cfg.checkpoint)
        return model, (f"GPT {_n(cfg.layers, 'layer')}, {_n(cfg.n_head, 'head')}, d_model {cfg.width}, block {cfg.block_size}, "
                       f"vocab {vocab}" + (", blocks recomputed in backward" if cfg.checkpoint else ""))
    make = char_lstm if cfg.model == "lstm" else char_rnn
    model = make(vocab, cfg.width, cfg.hidden_size, cfg.layers)
    return model, (f"{cfg.model.upper()} {_n(cfg.layers, 'layer')}, hidden {cfg.hidden_size}, embedding {cfg.width}, "
                   f"vocab {vocab}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def context_size(model: Module) -> int | None:
    """The most characters the model reads at once (a GPT's block), None for a recurrent model."""
    from ..layers.transformer import PositionEmbedding

    return next((m.block_size for m in model.modules() if isinstance(m, PositionEmbedding)), None)


@torch.no_grad()
def generate(model: Module, ids: Tensor, tokens: int, temperature: float = 1.0, top_k: int | None = None,
             gen: torch.Generator | None = None, context: int | None = None) -> Tensor:
    """`tokens` more ids after the prompt `ids` (T,), each drawn from softmax(logits / temperature) over the
    top_k most likely (all with None). A GPT sees the last `context` ids; a CharRNN reads the prompt once and then
    one id a step, carrying its hidden state. The model is put in eval mode; `gen` is a CPU generator (the
    caller's draws stay the caller's)."""
    from ..models import CharRNN

    model.eval()
    drawn = []
    if isinstance(model, CharRNN):
        out, state = model.rnn(model.emb(ids[None]))  # the prompt: (1, T, hidden)
        logits = model.head(out[:, -1])[0]
        for _ in range(tokens):
            nxt = _draw(logits, temperature, top_k, gen).to(ids.device)
            drawn.append(nxt)
            out, state = model.rnn(model.emb(nxt[None]), state)  # one step: (1, 1, hidden)
            logits = model.head(out[:, -1])[0]
        return torch.cat(drawn) if drawn else ids[:0]
    seq = ids.clone()
    for _ in range(tokens):
        window = seq[-context:] if context else seq
        nxt = _draw(model(window[None])[0, -1], temperature, top_k, gen).to(ids.device)
        seq = torch.cat([seq, nxt])
    return seq[ids.numel():]


def _draw(logits: Tensor, temperature: float, top_k: int | None, gen: torch.Generator | None) -> Tensor:
    """One id from softmax((logits - max) / temperature) over the top_k largest logits: shifting by the max first,
    a temperature as small as 1e-308 gives 0 for the likeliest and -inf (never inf - inf) for the others."""
    logits = logits.double()
    if top_k is not None and top_k < logits.numel():
        cut = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cut, float("-inf"))
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=gen)


def prompt_ids(data_vocab: str, prompt: str, device: torch.device) -> Tensor:
    """The prompt as ids of the run's vocabulary (a newline where the prompt is empty and the vocabulary has one)."""
    index = {c: i for i, c in enumerate(data_vocab)}
    if not prompt:
        prompt = "\n" if "\n" in index else data_vocab[0]
    unknown = list(dict.fromkeys(c for c in prompt if c not in index))  # in the prompt's order, once each
    if unknown:
        import unicodedata

        other_form = any(unicodedata.normalize(form, c) != c for c in unknown for form in ("NFC", "NFD"))
        hint = " (the text may write them in another Unicode form, e.g. decomposed accents)" if other_form else ""
        raise UsageError(f"--prompt: {', '.join(repr(c) for c in unknown)} not in the run's vocabulary of "
                         f"{len(data_vocab)} characters{hint}")
    return torch.tensor([index[c] for c in prompt], dtype=torch.long, device=device)


def indent(text: str, prefix: str = "  | ") -> str:
    return "\n".join(prefix + line for line in text.split("\n"))


class SampleCB(Callback):
    """After each validation, a sample of generated text (from a generator of its own, seeded with the run's seed
    and the step: the training's random draws are untouched, and a resumed run prints the same samples)."""

    order = 25  # after the metrics line

    def __init__(self, vocab: str, seed: int, log: Callable[[str], None], tokens: int = SAMPLE_TOKENS,
                 context: int | None = None) -> None:
        self.vocab, self.seed, self.log, self.tokens, self.context = vocab, seed, log, tokens, context
        self.samples: list[tuple[int, str]] = []  # (step, text)

    def after_epoch(self, learn: Learner) -> None:
        if learn.dist is not None and not learn.dist.is_main:
            return
        device = learn.x_valid.device
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + learn.t)
        ids = generate(learn.model, prompt_ids(self.vocab, "", device), self.tokens, 0.8, None, gen, self.context)
        text = "".join(self.vocab[i] for i in ids.tolist())
        self.samples.append((learn.t, text))
        self.log(f"sample after step {learn.t} (temperature 0.8):\n{indent(text)}")

    def state_dict(self) -> dict:
        return {"samples": [list(s) for s in self.samples]}

    def load_state_dict(self, state: dict) -> None:
        self.samples = [(int(t), str(text)) for t, text in state.get("samples", [])]


def write_samples(folder: Path, samples: list[tuple[int, str]]) -> Path:
    path = folder / "samples.txt"
    path.write_text("".join(f"--- after step {t}\n{text}\n" for t, text in samples), encoding="utf-8")
    return path

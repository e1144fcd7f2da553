"""Training character models from the command line: text runs, their folders, exact resume, the torch twin,
generate and eval, and the bad inputs of each."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from handgrad.cli import main
from handgrad.train import TrainConfig, run
from handgrad.train.learner import Learner
from handgrad.train.runfolder import RunFolder

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with one step.",
             "Fortune favours the bold; the bold read the manual.", "Every gradient is written by hand here.",
             "Time flies like an arrow, fruit flies like a banana."]


def make_text(folder, n=400, seed=0, name="corpus.txt"):
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(SENTENCES), (n,), generator=gen).tolist()
    path = folder / name
    path.write_text("\n".join(SENTENCES[i] for i in picks) + "\n", encoding="utf-8")
    return path


TINY = {"gpt": ["--n-layer", "1", "--d-model", "16", "--n-head", "2"],
        "lstm": ["--n-layer", "2", "--d-model", "8", "--hidden-size", "16"],
        "rnn": ["--d-model", "8", "--hidden-size", "16"]}


def tiny_config(model, text, out=None, **kw):
    sizes = {"gpt": dict(n_layer=1, d_model=16, n_head=2), "lstm": dict(n_layer=2, d_model=8, hidden_size=16),
             "rnn": dict(d_model=8, hidden_size=16)}[model]
    kw = {"block_size": 16, "bs": 8, "steps": 12, "eval_every": 4, **sizes, **kw}
    return TrainConfig(model=model, dataset=f"text:{text}", out=None if out is None else str(out), **kw)


def weights(out):
    return {k: v for k, v in load_file(out / "checkpoint.safetensors").items() if k.startswith(("model.", "opt."))}


@pytest.mark.parametrize("model", ["gpt", "lstm", "rnn"])
def test_a_text_run_crashed_mid_epoch_resumes_to_the_same_bits(tmp_path, monkeypatch, model):
    text = make_text(tmp_path)
    lines = []
    ref = run(tiny_config(model, text, tmp_path / "ref", save_every=3, eval_every=5), log=lines.append,
              progress=False)
    assert [h.step for h in ref.history] == [5, 10, 12]
    assert sum(line.startswith("sample after step") for line in lines) == 3

    one_batch = Learner._one_batch

    def crash_at_step_10(self, xb, yb):
        if self.t == 9:
            raise KeyboardInterrupt  # the process dies in step 10: step 8's checkpoint (batch 3 of 5) is the last
        one_batch(self, xb, yb)

    monkeypatch.setattr(Learner, "_one_batch", crash_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(model, text, tmp_path / "crashed", save_every=3, eval_every=5), log=lambda s: None,
            progress=False)
    meta = RunFolder(tmp_path / "crashed").load_checkpoint()[1]
    assert (meta["epoch"], meta["batch"], meta["t"]) == (1, 3, 8)
    monkeypatch.setattr(Learner, "_one_batch", one_batch)
    resumed_lines = []
    run(TrainConfig(), log=resumed_lines.append, progress=False, resume=tmp_path / "crashed")
    assert any(line.startswith("continuing at epoch 2, batch 3 (step 8)") for line in resumed_lines)
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in RunFolder(tmp_path / "ref").read_metrics()]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"}
                     for m in RunFolder(tmp_path / "crashed").read_metrics()]
    assert (tmp_path / "ref" / "samples.txt").read_text() == (tmp_path / "crashed" / "samples.txt").read_text()
    vocab = json.loads((tmp_path / "ref" / "vocab.json").read_text())["vocab"]
    assert vocab == "".join(sorted(set(text.read_text())))


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_the_torch_twin_of_a_text_run_matches_it(tmp_path, model):
    lines = []
    result = run(tiny_config(model, make_text(tmp_path), torch_twin=True, steps=10, lr=0.01), log=lines.append,
                 progress=False)
    assert [h.step for h in result.history] == [4, 8, 10] == [h.step for h in result.twin_history]
    for ours, theirs in zip(result.history, result.twin_history):  # float32, 10 steps of AdamW with clipping
        assert ours.valid_loss == pytest.approx(theirs.valid_loss, rel=1e-4)
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)
        assert ours.valid_acc == pytest.approx(theirs.valid_acc, abs=2e-3)
    assert result.history[-1].valid_loss < result.history[0].valid_loss - 0.02  # it learned
    assert any("handgrad is" in line and "% of it" in line for line in lines)


def test_clipping_and_the_warmup_are_on_by_default_for_text_models():
    cfg = TrainConfig(model="gpt", dataset="fortunes", steps=300)
    assert (cfg.optimizer, cfg.lr_schedule, cfg.warmup_steps, cfg.clip_norm) == ("adamw", "cosine", 30, 1.0)
    assert (TrainConfig(model="lstm", dataset="words").total_steps, TrainConfig(model="lstm").batch_size) == (1000, 32)
    img = TrainConfig()
    assert (img.optimizer, img.lr_schedule, img.warmup_steps, img.clip_norm, img.total_steps) == \
        ("sgd", "constant", 0, None, None)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_and_eval_a_text_run(tmp_path, capsys):
    text = make_text(tmp_path)
    code, out, err = cli(capsys, "train", "--model", "gpt", "--dataset", f"text:{text}", *TINY["gpt"],
                         "--block-size", "16", "--bs", "8", "--steps", "8", "--eval-every", "4", "--out",
                         tmp_path / "run", "--no-progress")
    assert code == 0, err
    assert "step 8/8" in out and "nats/char" in out and "sample after step 8" in out
    code, out, err = cli(capsys, "generate", tmp_path / "run", "--prompt", "The ", "--tokens", "40", "--top-k", "3",
                         "--temperature", "0.5", "--seed", "1")
    assert code == 0, err
    assert out.startswith("The ") and len(out.rstrip("\n")) >= 44 and set(out) <= set(text.read_text()) | {"\n"}
    again = cli(capsys, "generate", tmp_path / "run", "--prompt", "The ", "--tokens", "40", "--top-k", "3",
                "--temperature", "0.5", "--seed", "1")[1]
    assert again == out  # the seed decides the draws
    code, out, err = cli(capsys, "eval", tmp_path / "run", "--json")
    ev = json.loads(out)
    assert code == 0 and ev["split"] == "held-out" and ev["n"] > 0 and 0 < ev["loss"] < 10


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "Ω"], "--prompt: 'Ω' not in the run's vocabulary of"),
    (["--tokens", "0"], "--tokens must be from 1 to 100,000, got 0"),
    (["--temperature", "0"], "--temperature must be a number in (0, 100], got 0.0"),
    (["--temperature", "nan"], "--temperature must be a number in (0, 100], got nan"),
    (["--top-k", "0"], "--top-k must be from 1 to"),
])
def test_generate_bad_inputs(tmp_path, capsys, argv, message):
    text = make_text(tmp_path)
    assert cli(capsys, "train", "--model", "rnn", "--dataset", f"text:{text}", *TINY["rnn"], "--block-size", "8",
               "--bs", "4", "--steps", "2", "--eval-every", "2", "--out", tmp_path / "run", "--no-progress")[0] == 0
    code, out, err = cli(capsys, "generate", tmp_path / "run", *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_generate_and_predict_refuse_the_other_kind_of_run(tmp_path, capsys):
    text = make_text(tmp_path)
    assert cli(capsys, "train", "--model", "rnn", "--dataset", f"text:{text}", *TINY["rnn"], "--block-size", "8",
               "--bs", "4", "--steps", "2", "--eval-every", "2", "--out", tmp_path / "run", "--no-progress")[0] == 0
    code, _, err = cli(capsys, "predict", tmp_path / "run", "x.png")
    assert code == 2 and "a text run (--model rnn); predict classifies images" in err
    code, _, err = cli(capsys, "eval", tmp_path / "run", "--data", tmp_path)
    assert code == 2 and "--data is for image runs" in err


def test_resuming_on_changed_text_is_refused_in_one_line(tmp_path, capsys):
    text = make_text(tmp_path)
    out = tmp_path / "run"
    assert cli(capsys, "train", "--model", "lstm", "--dataset", f"text:{text}", *TINY["lstm"], "--block-size", "8",
               "--bs", "4", "--steps", "4", "--eval-every", "2", "--out", out, "--no-progress")[0] == 0
    text.write_text(text.read_text() + "Zebras quietly!\n", encoding="utf-8")  # new characters
    code, _, err = cli(capsys, "train", "--resume", out, "--no-progress")
    assert code == 1 and err.count("\n") == 1
    assert "the run's vocabulary has" in err and "new: ['!', 'Z'], gone: []" in err, err
    text.write_text(text.read_text().replace("Zebras quietly!\n", "The fox.\n"), encoding="utf-8")  # same vocab
    code, _, err = cli(capsys, "train", "--resume", out, "--no-progress")
    assert code == 1 and "not the text this run trained on" in err and err.count("\n") == 1, err
    code, _, err = cli(capsys, "generate", out, "--tokens", "5")  # the weights need no text
    assert code == 0, err


@pytest.mark.parametrize("content, message", [
    (b"", "empty, expected some text"),
    (b"\x00\x01\x02binary", "a binary file (it holds NUL bytes), expected UTF-8 text"),
    (b"caf\xe9 latin-1", "not UTF-8 text (byte 3 is 0xe9)"),
    (b"short", "shorter than one block of 16"),
])
def test_bad_text_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    code, _, err = cli(capsys, "train", "--model", "gpt", "--dataset", f"text:{path}", *TINY["gpt"], "--block-size",
                       "16", "--steps", "2", "--no-progress")
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt", "--dataset", "fortunes", "--epochs", "3"], "--epochs is for the image models: --model gpt "
                                                                   "trains for --steps N"),
    (["--model", "lstm", "--dataset", "words", "--hidden", "50"], "--hidden is for the image models"),
    (["--model", "mlp", "--block-size", "32"], "--block-size is for the text models"),
    (["--model", "mlp", "--dataset", "fortunes"], "--dataset fortunes is text: train a character model on it"),
    (["--model", "gpt", "--dataset", "mnist"], "--model gpt is a character model: it trains on text"),
    (["--model", "gpt", "--dataset", "fortunes", "--d-model", "30", "--n-head", "4"], "--n-head must divide "
                                                                                      "--d-model (30), got 4"),
    (["--model", "gpt", "--dataset", "fortunes", "--steps", "0"], "--steps must be from 1 to"),
    (["--model", "gpt", "--dataset", "text:"], "--dataset must be one of"),
    (["--model", "gpt", "--dataset", "text:/no/such/file.txt"], "/no/such/file.txt: no such file"),
])
def test_text_flags_bad_inputs(capsys, argv, message):
    code, _, err = cli(capsys, "train", *argv, "--no-progress")
    assert code in (1, 2) and err.count("\n") == 1 and message in err, err


def test_steps_caps_an_image_run(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 255, (640, 784)).astype(np.uint8),
             y_train=rng.integers(0, 10, 640))
    cfg = TrainConfig(data=str(tmp_path / "mnist.npz"), epochs=5, bs=64, steps=13, download=False, check=False)
    result = run(cfg, log=lambda s: None, progress=False)
    # 576 training images (a tenth held out) -> 9 batches an epoch: step 13 is batch 4 of epoch 2, then validation
    assert [h.step for h in result.history] == [9, 13]
    assert len(result.history[-1].batch_losses) == 4


@pytest.mark.slow
def test_lr_find_on_a_text_model(tmp_path, capsys):
    code, out, err = cli(capsys, "lr-find", "--model", "lstm", "--dataset", f"text:{make_text(tmp_path)}",
                         *TINY["lstm"], "--block-size", "8", "--bs", "4", "--plot", tmp_path / "lr.png")
    assert code == 0, err
    assert (tmp_path / "lr.png").stat().st_size > 1000 and "lr-find:" in out


def test_nproc_2_text_run_matches_one_process(tmp_path):
    text = make_text(tmp_path)
    base = [sys.executable, "-m", "handgrad", "train", "--model", "gpt", "--dataset", f"text:{text}", *TINY["gpt"],
            "--block-size", "16", "--bs", "8", "--steps", "6", "--eval-every", "3", "--no-progress", "--no-check",
            "--opt", "sgd", "--lr", "0.5"]  # (AdamW would blow a last-bit difference of a tiny gradient up to lr)
    one = subprocess.run([*base, "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    two = subprocess.run([*base, "--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert len(a) > 4
    for k in a:  # the same global batches: sums of two halves differ from one sum in the last bits only
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert not torch.equal(a["model.0.weight"], load_file(tmp_path / "one" / "checkpoint.safetensors")
                           ["model.0.weight"] * 0)  # (it trained)


def test_a_relative_text_path_is_recorded_absolute(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_text(tmp_path)
    assert cli(capsys, "train", "--model", "rnn", "--dataset", "text:corpus.txt", *TINY["rnn"], "--block-size", "8",
               "--bs", "4", "--steps", "2", "--eval-every", "2", "--out", "run", "--no-progress")[0] == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == f"text:{tmp_path / 'corpus.txt'}"
    monkeypatch.chdir("/")
    code, out, err = cli(capsys, "eval", tmp_path / "run")
    assert code == 0 and "nats/char" in out, err


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_a_recurrent_model_generates_from_its_state_what_it_would_from_the_whole_text(cell):
    """generate carries a CharRNN's hidden state (linear in the tokens); the ids drawn equal those drawn by
    reading the whole text again for every character."""
    from handgrad.models import CharRNN
    from handgrad.train.text import _draw, generate

    torch.manual_seed(0)
    model = CharRNN(7, 5, 6, 2, cell, dtype=torch.float64)
    prompt = torch.tensor([1, 4, 2])
    fast = generate(model, prompt, 12, 0.9, 4, torch.Generator().manual_seed(5))
    gen, seq = torch.Generator().manual_seed(5), prompt.clone()
    for _ in range(12):
        seq = torch.cat([seq, _draw(model(seq[None])[0, -1], 0.9, 4, gen)])
    assert torch.equal(fast, seq[3:]) and fast.numel() == 12


def test_a_tiny_temperature_picks_the_likeliest_character():
    from handgrad.train.text import _draw

    logits = torch.tensor([0.5, 3.0, -2.0, 2.9])
    for t in (1e-308, 5e-324, 1e-30):
        assert int(_draw(logits, t, None, torch.Generator().manual_seed(0))) == 1


def test_config_json_edited_after_training_is_refused(tmp_path, capsys):
    text = make_text(tmp_path)
    out = tmp_path / "run"
    assert cli(capsys, "train", "--model", "gpt", "--dataset", f"text:{text}", *TINY["gpt"], "--block-size", "8",
               "--bs", "4", "--steps", "4", "--eval-every", "2", "--out", out, "--no-progress")[0] == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "n_head": 4}))
    for argv in (["generate", out], ["eval", out], ["train", "--resume", out]):
        code, _, err = cli(capsys, *argv)
        assert code == 1 and "key 'n_head' is 4, but" in err and "was trained with 2" in err, err
    (out / "config.json").write_text(json.dumps({**config, "steps": 8}))
    code, _, err = cli(capsys, "train", "--resume", out)
    assert code == 1 and "key 'steps' is 8" in err, err


def test_resuming_a_finished_text_run_trains_nothing(tmp_path, capsys):
    text = make_text(tmp_path)
    out = tmp_path / "run"
    assert cli(capsys, "train", "--model", "rnn", "--dataset", f"text:{text}", *TINY["rnn"], "--block-size", "8",
               "--bs", "4", "--steps", "3", "--eval-every", "2", "--out", out, "--no-progress")[0] == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    code, stdout, err = cli(capsys, "train", "--resume", out, "--no-progress")
    assert code == 0 and "this run is finished (step 3 of 3" in stdout, stdout + err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    code, _, err = cli(capsys, "train", "--resume", out, "--epochs", "9")
    assert code == 2 and "--epochs is for image runs: this text run trains for 3 steps" in err, err


def test_a_byte_order_mark_is_not_a_character_and_a_reordered_vocabulary_is_said(tmp_path, capsys):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff".encode() + ("abc def\n" * 40).encode())
    out = tmp_path / "run"
    assert cli(capsys, "train", "--model", "rnn", "--dataset", f"text:{path}", *TINY["rnn"], "--block-size", "8",
               "--bs", "4", "--steps", "2", "--eval-every", "2", "--out", out, "--no-progress")[0] == 0
    assert json.loads((out / "vocab.json").read_text())["vocab"] == "\n abcdef"
    vocab = json.loads((out / "vocab.json").read_text())
    (out / "vocab.json").write_text(json.dumps({**vocab, "vocab": " \nabcdef"}))
    code, _, err = cli(capsys, "train", "--resume", out)
    assert code == 1 and "trained with another vocabulary" in err, err


def test_huge_eval_every_draws_only_the_batches_it_trains(tmp_path):
    result = run(tiny_config("rnn", make_text(tmp_path), steps=3, eval_every=10**9), log=lambda s: None,
                 progress=False)
    assert [h.step for h in result.history] == [3]


@pytest.mark.parametrize("argv, message", [
    (["--model", "lstm", "--n-head", "3"], "--n-head is for --model gpt, not --model lstm"),
    (["--model", "rnn", "--no-recompute"], "--no-recompute is for --model gpt, not --model rnn"),
    (["--model", "gpt", "--hidden-size", "64"], "--hidden-size is for --model lstm or rnn, not --model gpt"),
    (["--model", "gpt", "--steps", "10", "--warmup", "10"], "--warmup 10: the run takes 10 steps; warm-up must end"),
    (["--model", "gpt", "--schedule", "constant", "--warmup", "5"], "--warmup is for the cosine schedule"),
    (["--model", "gpt", "--nproc", "2", "--bs", "1"], "--bs 1: each of the --nproc 2 processes needs at least one"),
    (["--model", "gpt", "--n-layer", "256", "--d-model", "65536", "--n-head", "2"], "the gpt would have"),
    (["--model", "lstm", "--n-layer", "256", "--hidden-size", "65536"], "the lstm would have"),
])
def test_text_flags_that_cannot_apply_are_one_line(tmp_path, capsys, argv, message):
    code, _, err = cli(capsys, "train", "--dataset", f"text:{make_text(tmp_path)}", *argv, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_text_path_that_is_a_folder_and_prompts_outside_the_vocabulary(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--model", "gpt", "--dataset", f"text:{tmp_path}", "--no-progress")
    assert code == 1 and "not a regular file" in err, err
    from handgrad.errors import UsageError
    from handgrad.train.text import prompt_ids

    with pytest.raises(UsageError, match=r"--prompt: 'T', 'H', 'E' not in"):
        prompt_ids("abc", "THE", torch.device("cpu"))
    with pytest.raises(UsageError, match="another Unicode form"):
        prompt_ids("cafe\u0301", "caf\u00e9", torch.device("cpu"))


def test_lr_find_refuses_training_lengths(tmp_path, capsys):
    code, _, err = cli(capsys, "lr-find", "--model", "lstm", "--dataset", f"text:{make_text(tmp_path)}", "--steps",
                       "5")
    assert code == 2 and "--steps and --eval-every are for training" in err, err

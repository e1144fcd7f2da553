"""Text data for character models: look-up, vocabulary, held-out split, windows, bad files."""

from pathlib import Path

import pytest
import torch

from handgrad.data.text import FORTUNES_DIR, WORDS_FILE, check_vocab, fortune_files, load_text, windows
from handgrad.errors import DataError


def test_a_utf8_file_its_vocabulary_split_and_windows(tmp_path):
    text = "héllo wörld\n" * 50
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = load_text(f"text:{tmp_path / 't.txt'}")
    assert data.vocab == "".join(sorted(set(text)))
    assert data.decode(torch.cat([data.train, data.valid])) == text  # every character, in order
    assert len(data.valid) == len(text) // 10
    gen = torch.Generator().manual_seed(0)
    x, y = windows(data.train, 8, 4, gen)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])  # the targets are the next characters
    x2, _ = windows(data.train, 8, 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)  # seeded


def test_fortune_files_skip_the_index_files(tmp_path):
    for name in ("art", "art.dat", "art.u8", "wisdom"):
        (tmp_path / name).write_text("a fortune\n%\nanother\n%\n")
    (tmp_path / "off").mkdir()
    assert [p.name for p in fortune_files(tmp_path)] == ["art", "wisdom"]
    data = load_text("fortunes", fortunes_dir=tmp_path)
    assert data.source == str(tmp_path) and "%" in data.vocab


@pytest.mark.parametrize("content, piece", [
    (b"", "empty, expected some text"),
    (b"\x00\x01\x02binary", "a binary file (it holds NUL bytes)"),
    (b"caf\xe9 latin-1", "not UTF-8 text (byte 3 is 0xe9)"),
])
def test_bad_files_are_one_line(tmp_path, content, piece):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(DataError, match="^" + str(tmp_path / "f").replace("\\", "\\\\")) as e:
        load_text(f"text:{tmp_path / 'f'}")
    assert piece in str(e.value) and "\n" not in str(e.value)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_text(f"text:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="unknown text data set 'poems'"):
        load_text("poems")
    with pytest.raises(DataError, match=r"no fortune files \(apt-get install fortunes\)"):
        load_text("fortunes", fortunes_dir=tmp_path / "none")
    (tmp_path / "short").write_text("abcdefghijk")
    data = load_text(f"text:{tmp_path / 'short'}")
    with pytest.raises(DataError, match="shorter than one block of 16"):
        windows(data.train, 16, 2, torch.Generator())
    (tmp_path / "other").write_text("xyz" * 10)
    with pytest.raises(DataError, match="the run's vocabulary has 11 characters, this text's 3"):
        check_vocab(data.vocab, load_text(f"text:{tmp_path / 'other'}"), "run/vocab.json")


@pytest.mark.skipif(not Path(WORDS_FILE).is_file(), reason="wamerican not installed")
def test_the_real_word_list():
    data = load_text("words")
    assert len(data.train) > 500_000 and "\n" in data.vocab and "a" in data.vocab


@pytest.mark.skipif(not Path(FORTUNES_DIR).is_dir(), reason="fortunes not installed")
def test_the_real_fortunes():
    data = load_text("fortunes")
    assert len(data.train) > 100_000

import gzip
import hashlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from handgrad.data import DataLoader, load_dataset, locate, read_array_pickle, read_idx, write_idx
from handgrad.data import datasets as ds_mod
from handgrad.errors import DataError


def fake_idx_folder(folder, n_train=120, n_test=30, compress=True, seed=0):
    """The four MNIST-format IDX files, with random pixels and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, a in arrays.items():
        write_idx(folder / (stem + ext), a)
    return arrays


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data in sight: empty cwd, cache and system dir; no $HANDGRAD_DATA."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HANDGRAD_DATA", raising=False)
    monkeypatch.setattr(ds_mod, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(ds_mod, "SYSTEM_DIR", tmp_path / "system")
    return tmp_path


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, compress, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)


def test_idx_header_is_the_published_one(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8))
    assert (tmp_path / "x").read_bytes()[:16] == bytes.fromhex("00000803" "00000002" "0000001c" "0000001c")


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(DataError, match=rf"{p}: not an IDX file: magic number 0x12340803"):
        read_idx(p)


def test_idx_size_mismatch(tmp_path):
    p = tmp_path / "short"
    write_idx(p, np.zeros((3, 4), np.uint8))
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"header says shape \[3, 4\] \(12 bytes of data\), but the file holds 10"):
        read_idx(p)


def test_truncated_gz(tmp_path):
    p = tmp_path / "x.gz"
    write_idx(p, np.arange(5000, dtype=np.int32))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{p}: corrupted or truncated gzip data"):
        read_idx(p)


def test_corrupted_gz(tmp_path):
    p = tmp_path / "x.gz"
    data = bytearray(gzip.compress(bytes(range(256)) * 40))
    data[20:40] = b"\xff" * 20
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{p}: corrupted or truncated gzip data"):
        read_idx(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope: no such file"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------- pickles


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "mnist.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump(((np.zeros((2, 784), np.float32), Evil()),), f)
    with pytest.raises(DataError, match=r"pickle refers to (posix|os)\.system; only numpy arrays are allowed"):
        read_array_pickle(p)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("payload, match", [
    ({"a": 1}, "pickle holds a dict"),
    ((np.zeros(3), "text"), "pickle holds a str"),
    ((np.array([object()], dtype=object),), "pickle refers to builtins.object|object array"),
])
def test_pickle_with_non_arrays_is_refused(tmp_path, payload, match):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match=match):
        read_array_pickle(p)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_of_arrays_loads_at_every_protocol(tmp_path, protocol):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(((a, np.arange(3)),), protocol=protocol))
    ((b, c),) = read_array_pickle(p)
    assert np.array_equal(a, b) and np.array_equal(c, np.arange(3))


def test_garbage_pickle(tmp_path):
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(b"this is not a pickle"))
    with pytest.raises(DataError, match=rf"{p}: not a readable pickle"):
        read_array_pickle(p)


# ------------------------------------------------------------ datasets


def test_npz_dataset_and_bad_npz(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 60))
    d = load_dataset("mnist", p, allow_download=False)
    assert d.x_train.shape == (50, 784) and d.x_valid.shape == (10, 784)
    assert d.x_train.dtype == torch.float32 and float(d.x_train.max()) <= 1.0
    np.savez(p, images=np.zeros(3))
    with pytest.raises(DataError, match="expected arrays x_train and y_train, found"):
        load_dataset("mnist", p, allow_download=False)


def test_idx_folder_dataset_splits(tmp_path):
    arrays = fake_idx_folder(tmp_path / "fm")
    d = load_dataset("fashion-mnist", tmp_path / "fm", allow_download=False)
    assert d.x_train.shape == (100, 784) and d.x_valid.shape == (20, 784) and d.x_test.shape == (30, 784)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"][:100].reshape(100, -1) / 255.0).float()
    torch.testing.assert_close(d.x_train, expected)
    assert d.classes[0] == "T-shirt/top"


def test_labels_count_must_match_images(tmp_path):
    fake_idx_folder(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: expected 120 labels \[N\] \(one per image\), got shape \[7\]"):
        load_dataset("fashion-mnist", tmp_path / "fm", allow_download=False)


def test_lookup_order(isolated, monkeypatch):
    tmp = isolated
    fake_idx_folder(tmp / "system" / "fashion-mnist", seed=1)
    assert locate("fashion-mnist") == tmp / "system" / "fashion-mnist"
    fake_idx_folder(tmp / "cache" / "fashion-mnist", seed=2)
    assert locate("fashion-mnist") == tmp / "cache" / "fashion-mnist"
    fake_idx_folder(tmp / "data" / "fashion-mnist", seed=3)
    assert locate("fashion-mnist") == tmp / "data" / "fashion-mnist"
    fake_idx_folder(tmp / "env", seed=4)
    monkeypatch.setenv("HANDGRAD_DATA", str(tmp / "env"))
    assert locate("fashion-mnist") == tmp / "env"
    fake_idx_folder(tmp / "explicit", seed=5)
    assert locate("fashion-mnist", tmp / "explicit") == tmp / "explicit"


def test_not_found_lists_every_option_in_one_line(isolated):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", allow_download=False)
    msg = str(e.value)
    assert "\n" not in msg
    for piece in ("$HANDGRAD_DATA (not set)", "./data", "user cache", "system datasets", "download not allowed",
                  "apt-get install dataset-fashion-mnist"):
        assert piece in msg


def test_download_checks_sha256_and_writes_atomically(isolated, monkeypatch):
    src = isolated / "mirror"
    fake_idx_folder(src)
    sums = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in src.iterdir()}
    info = ds_mod.DatasetInfo("mnist", ds_mod.DATASETS["mnist"].classes, (src.as_uri() + "/",), sums)
    monkeypatch.setitem(ds_mod.DATASETS, "mnist", info)
    d = load_dataset("mnist")
    assert d.source == str(isolated / "cache" / "mnist") and d.x_train.shape == (100, 784)
    assert not list((isolated / "cache" / "mnist").glob("*.part"))

    bad = dict(sums, **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    monkeypatch.setitem(ds_mod.DATASETS, "mnist", ds_mod.DatasetInfo("mnist", info.classes, info.urls, bad))
    (isolated / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="does not match the expected 000000000000"):
        load_dataset("mnist")
    assert not (isolated / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_download_failure_is_reported(isolated):
    with pytest.raises(DataError, match="download failed: https://"):
        load_dataset("mnist")  # the network is disabled in tests


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar': expected one of mnist, fashion-mnist"):
        load_dataset("cifar")


# ------------------------------------------------------------ loader


def test_loader_shuffles_reproducibly_and_covers_everything():
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    a = [yb.tolist() for _, yb in DataLoader(x, y, 3, shuffle=True, seed=7)]
    b = [yb.tolist() for _, yb in DataLoader(x, y, 3, shuffle=True, seed=7)]
    assert a == b and sorted(sum(a, [])) == list(range(10)) and [len(t) for t in a] == [3, 3, 3, 1]
    dl = DataLoader(x, y, 3, shuffle=True, seed=7)
    first, second = [sum((yb.tolist() for _, yb in dl), []) for _ in range(2)]
    assert first != second  # a new order each epoch
    assert second == dl.order(1).tolist()


def test_loader_without_shuffle_yields_views():
    x, y = torch.randn(10, 4), torch.arange(10)
    batches = list(DataLoader(x, y, 4, drop_last=True))
    assert len(batches) == 2 and all(xb.data_ptr() == x[i * 4].data_ptr() for i, (xb, _) in enumerate(batches))


def test_loader_bad_input():
    with pytest.raises(ValueError, match="batch size must be a positive integer, got 0"):
        DataLoader(torch.zeros(3, 2), torch.zeros(3), 0)
    with pytest.raises(ValueError, match="same number of samples, got 3 and 2"):
        DataLoader(torch.zeros(3, 2), torch.zeros(2), 1)


def test_a_gzip_bomb_is_refused_in_one_line_without_filling_memory(tmp_path):
    """An IDX header promising 10 GB in a gzip file of ~50 kB, and a gzip stream of 60 MB of zeros: refused by
    the header check or the expansion cap, with the memory of the process growing by far less than the data
    (the reader used to decompress everything before looking at the header)."""
    import gzip
    import struct

    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 100000, 1000, 100))
        zeros = bytes(1 << 20)
        for _ in range(60):
            f.write(zeros)
    plain = tmp_path / "blob.gz"
    with gzip.open(plain, "wb", compresslevel=9) as f:
        for _ in range(60):
            f.write(zeros)
    code = (
        "import resource, sys\n"
        "from handgrad.data.formats import read_idx, read_bytes\n"
        "from handgrad.errors import DataError\n"
        "for fn, path in ((read_idx, sys.argv[1]), (read_bytes, sys.argv[2])):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    try:\n"
        "        fn(path)\n"
        "    except DataError as e:\n"
        "        print(str(e))\n"
        "    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(bomb), str(plain)], capture_output=True, text=True,
                         timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout + out.stderr
    assert "IDX header says shape [100000, 1000, 100]" in lines[0] and "can hold" in lines[0]
    assert "expands more than 250 times" in lines[2] and "decompression bomb" in lines[2]
    assert int(lines[1]) < 50 and int(lines[3]) < 100, lines  # MB the reading added to the peak


@pytest.mark.parametrize("make, says", [
    ("shared", "more than 16 deep"),  # a list holding the same list twice, 60 levels: 2**60 paths, 61 objects
    ("shared-shallow", None),  # the same 12 levels deep: 4096 paths, walked once each object
    ("cycle", None),  # a list holding itself: walked once, and it holds only itself and an array
    ("deep", "nests lists or tuples more than 16 deep"),
])
def test_pickle_bombs_answer_at_once(tmp_path, make, says):
    """A 426-byte pickle of shared references never finished; a self-referential or deeply nested one ended in
    a RecursionError traceback."""
    import time

    if make.startswith("shared"):
        obj = [np.zeros(2)]
        for _ in range(60 if make == "shared" else 12):
            obj = [obj, obj]
    elif make == "cycle":
        obj = [np.zeros(2)]
        obj.append(obj)
    else:
        obj = [np.zeros(2)]
        for _ in range(400):
            obj = [obj]
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    start = time.perf_counter()
    if says is None:
        assert isinstance(read_array_pickle(path), list)
    else:
        with pytest.raises(DataError) as caught:
            read_array_pickle(path)
        assert says in str(caught.value) and "\n" not in str(caught.value)
    assert time.perf_counter() - start < 2


def test_a_6mb_gzip_that_expands_to_6gb_through_the_cli_stays_under_300mb(tmp_path):
    """The reported bomb: `handgrad train --data` on IDX files whose 6 MB training images expand to 6 GB (gzip
    members of 64 MB of zeros, repeated). The command's peak RSS (its own, measured by the system) stays under
    300 MB and it ends in one line."""
    import gzip
    import resource
    import struct

    folder = tmp_path / "bomb"
    folder.mkdir()
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(60000, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    member = gzip.compress(bytes(64 << 20), compresslevel=9)
    head = gzip.compress(struct.pack(">HBB3I", 0, 0x08, 3, 60000, 28, 28))  # MNIST's header, then 6 GB
    with open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(head)
        for _ in range(96):
            f.write(member)
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_size < 8 << 20
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run([sys.executable, '-m', 'handgrad', 'train', '--data', sys.argv[1], '--dataset',\n"
            "                    'mnist', '--no-download', '--no-progress'], capture_output=True, text=True)\n"
            "print(p.returncode)\n"
            "print(p.stderr.strip())\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    assert lines[0] == "1" and lines[1].startswith("handgrad: error: ") and "IDX header says shape" in lines[1]
    assert int(lines[2]) < 300, lines  # MB, the command's peak (importing torch alone takes about 220)


def test_a_gzipped_pickle_bomb_is_refused_before_its_array_is_allocated(tmp_path):
    """A mnist.pkl.gz of ~60 KB whose arrays hold 60 MB of zeros: the unpickler reads from the stream and is
    refused the array's bytes (more than 250x the file) before anything that large is allocated."""
    import gzip

    zeros = np.zeros((1000, 60000), np.uint8)
    obj = ((zeros, np.zeros(1000, np.int64)), (zeros[:10], np.zeros(10, np.int64)))
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        pickle.dump(obj, f, protocol=2)
    del zeros, obj
    assert path.stat().st_size < 200_000
    code = (
        "import resource, sys\n"
        "from handgrad.data.formats import read_array_pickle\n"
        "from handgrad.errors import DataError\n"
        "import numpy\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_array_pickle(sys.argv[1])\n"
        "except DataError as e:\n"
        "    print(str(e))\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert "the pickle asks for more bytes than gzip data of" in lines[0] and "decompression bomb" in lines[0]
    assert int(lines[1]) < 30, lines  # MB: the 60 MB array was never allocated

"""proxytune.data: stdlib/text/token corpora, the teacher task, and error messages."""

import hashlib
import sysconfig
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from proxytune.data import Corpus, DataError, TeacherTask, load, load_stdlib, load_text, load_tokens
from proxytune.data import corpus as corpus_mod


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def stdlib():
    return load_stdlib()


# ------------------------------------------------------------------ stdlib

def test_stdlib_deterministic(stdlib):
    corpus_mod._build_stdlib.cache_clear()  # force a real rebuild, not the in-process cache
    corpus_mod._read_stdlib.cache_clear()
    again = load_stdlib()
    assert again is not stdlib
    assert again.sha256 == stdlib.sha256
    assert again.train_files == stdlib.train_files and again.val_files == stdlib.val_files
    assert torch.equal(again.train, stdlib.train) and torch.equal(again.val, stdlib.val)
    a = stdlib.sample("train", 4, 32, _gen(7))
    b = again.sample("train", 4, 32, _gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert load_stdlib() is again  # cached in-process


def test_stdlib_content(stdlib):
    info = stdlib.info()
    assert info["vocab_size"] == stdlib.vocab_size == 256 and stdlib.task == "lm"
    assert stdlib.train.dtype == torch.uint8 and stdlib.train.ndim == 1
    assert info["n_train"] == len(stdlib.train) > 1_000_000 and info["n_val"] == len(stdlib.val) > 10_000
    assert info["python_version"].count(".") == 2 and info["n_files"] > 100
    assert info["sha256"] == hashlib.sha256(stdlib.train.numpy().tobytes() + stdlib.val.numpy().tobytes()).hexdigest()
    files = stdlib.train_files + stdlib.val_files
    assert info["n_files"] == len(files) and "os.py" in stdlib.train_files + stdlib.val_files
    assert list(stdlib.train_files) == sorted(stdlib.train_files)
    for f in files:
        parts = PurePosixPath(f).parts
        assert f.endswith(".py") and not parts[-1].startswith("test_"), f
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts[:-1]), f
    # Whole files on one side: val is ~5% of files, disjoint from train, and the
    # first val file's bytes appear at the start of the val split.
    assert not set(stdlib.train_files) & set(stdlib.val_files)
    assert abs(len(stdlib.val_files) - 0.05 * len(files)) <= 1
    root = Path(sysconfig.get_paths()["stdlib"])
    first = (root / stdlib.val_files[0]).read_bytes()
    assert stdlib.val[:len(first)].numpy().tobytes() == first


def test_stdlib_max_bytes(stdlib):
    small = load_stdlib(max_bytes=5000)
    assert len(small.train) == 5000 and torch.equal(small.train, stdlib.train[:5000])
    assert torch.equal(small.val, stdlib.val) and small.sha256 != stdlib.sha256
    assert load("stdlib", max_bytes=5000) is small


def test_sample_targets_are_shifted(stdlib):
    for split in ("train", "val"):
        x, y = stdlib.sample(split, 8, 64, _gen(1))
        assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert x.is_contiguous() and y.is_contiguous()
        data = (stdlib.train if split == "train" else stdlib.val).numpy().tobytes()
        for row_x, row_y in zip(x, y):  # each row is a real window of its split
            assert data.find(bytes(row_x.tolist() + row_y[-1:].tolist())) >= 0
    a, b = stdlib.sample("train", 8, 64, _gen(1)), stdlib.sample("train", 8, 64, _gen(2))
    assert not torch.equal(a[0], b[0])


def test_val_batches_fixed(stdlib):
    first = stdlib.val_batches(3, 4, 32)
    torch.manual_seed(123)
    second = stdlib.val_batches(3, 4, 32)
    assert len(first) == 3
    for (x1, y1), (x2, y2) in zip(first, second):
        assert x1.shape == (4, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])
    assert not torch.equal(first[0][0], first[-1][0])
    # Evenly spaced over the split: the first window starts at 0, the last ends at the end.
    assert torch.equal(first[0][0][0], stdlib.val[:32].long())
    assert torch.equal(first[-1][1][-1], stdlib.val[-32:].long())


# ------------------------------------------------------------------ user files

def test_load_text(tmp_path):
    data = bytes(range(256)) * 4
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    corpus = load(str(path), val_fraction=0.25)
    assert corpus.kind == "text" and corpus.vocab_size == 256 and corpus.name == str(path)
    assert corpus.train.numpy().tobytes() == data[:768] and corpus.val.numpy().tobytes() == data[768:]
    assert corpus.sha256 == hashlib.sha256(data).hexdigest()
    x, y = corpus.sample("train", 2, 16, _gen())
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 256
    assert load_text(path, val_fraction=0.25).sha256 == corpus.sha256


@pytest.mark.parametrize("dtype, vocab", [("uint16", 50257), ("uint32", 100_000)])
def test_token_roundtrip(tmp_path, dtype, vocab):
    tokens = np.random.default_rng(0).integers(0, vocab, size=2000).astype(dtype)
    tokens[5] = vocab - 1
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    corpus = load(str(path), vocab_size=vocab, dtype=dtype, val_fraction=0.1)
    assert corpus.kind == "tokens" and corpus.vocab_size == vocab
    assert corpus.info()["dtype"] == dtype and corpus.train.dtype == getattr(torch, dtype)
    assert len(corpus.train) == 1800 and len(corpus.val) == 200
    assert np.array_equal(corpus.train.numpy(), tokens[:1800]) and np.array_equal(corpus.val.numpy(), tokens[1800:])
    assert corpus.sha256 == hashlib.sha256(tokens.tobytes()).hexdigest()
    x, y = corpus.sample("train", 4, 20, _gen())
    assert x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < vocab
    (vx, _), = corpus.val_batches(1, 2, 20)
    assert torch.equal(vx[0], torch.from_numpy(tokens[1800:1820].astype(np.int64)))
    # Memory-mapped, not copied: a write to the file shows through the tensor.
    with open(path, "r+b") as f:
        f.write(np.array([7], dtype=dtype).tobytes())
    assert int(corpus.train[0]) == 7


def test_token_val_path(tmp_path):
    train, val = np.arange(100, dtype=np.uint16), np.arange(50, dtype=np.uint16)[::-1].copy()
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    corpus = load_tokens(tmp_path / "train.bin", vocab_size=100, val_path=tmp_path / "val.bin")
    assert len(corpus.train) == 100 and np.array_equal(corpus.val.numpy(), val)
    assert corpus.sha256 == hashlib.sha256(train.tobytes() + val.tobytes()).hexdigest()
    assert isinstance(corpus, Corpus) and corpus.info()["val_path"] == str(tmp_path / "val.bin")


# ------------------------------------------------------------------ errors

def _raises(fn, *facts):
    with pytest.raises(DataError) as err:
        fn()
    for fact in facts:
        assert str(fact) in str(err.value), (fact, str(err.value))
    return str(err.value)


def test_errors(tmp_path):
    missing = tmp_path / "nope.bin"
    _raises(lambda: load(str(missing), vocab_size=10), missing, "uint16 token ids")
    _raises(lambda: load(str(tmp_path / "nope.txt")), "nope.txt", "stdlib", "text file")
    _raises(lambda: load_text(tmp_path / "gone.txt"), "gone.txt", "expected")

    path = tmp_path / "t.bin"
    np.array([1, 2, 3, 999, 4, 5, 6, 7], dtype=np.uint16).tofile(path)
    _raises(lambda: load(str(path), vocab_size=500), "999", "vocab_size=500", str(path))
    _raises(lambda: load(str(path)), "vocab_size", str(path))
    _raises(lambda: load_tokens(path, None), "vocab_size")  # type: ignore[arg-type]
    _raises(lambda: load_tokens(path, 1000, dtype="float32"), "float32", "uint16", "uint32")
    _raises(lambda: load_tokens(path, 70_000, dtype="uint16"), "70000", "uint32")

    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    _raises(lambda: load_tokens(odd, 100), "3 bytes", "uint16")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _raises(lambda: load_text(empty), "empty")

    small = load_tokens(path, 1000, val_fraction=0.25)  # 6 train tokens, 2 val tokens
    _raises(lambda: small.sample("train", 2, 6, _gen()), "6 tokens", "seq_len=6", "at least 7", str(path))
    _raises(lambda: small.val_batches(1, 1, 4), "val split has 2 tokens", "at least 5")
    small.sample("train", 2, 5, _gen())  # exactly seq_len + 1 tokens is enough
    _raises(lambda: small.sample("test", 2, 1, _gen()), "'test'")
    _raises(lambda: small.check(6), "at least 7")

    text = tmp_path / "a.txt"
    text.write_bytes(b"hello world")
    _raises(lambda: load(str(text), vocab_size=50257), "vocab_size=50257")
    _raises(lambda: load_stdlib(val_fraction=1.5), "val_fraction")


# ------------------------------------------------------------------ teacher

@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_teacher(kind):
    task = TeacherTask(d_in=8, d_out=5, kind=kind, seed=3, n_val=256)
    same, other = TeacherTask(d_in=8, d_out=5, kind=kind, seed=3, n_val=256), TeacherTask(d_in=8, d_out=5, kind=kind, seed=4)
    assert task.sha256 == same.sha256 != other.sha256 and task.task == kind and task.vocab_size is None
    assert task.info() == {**same.info()} and task.info()["name"] == "teacher" and task.info()["seed"] == 3

    x, y = task.sample("train", 64, None, _gen(0))
    x2, y2 = same.sample("train", 64, None, _gen(0))
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (64, 8) and x.dtype == torch.float32
    _, y3 = other.sample("train", 64, None, _gen(0))
    assert not torch.equal(y, y3)  # same inputs, different teacher

    if kind == "classification":
        assert y.dtype == torch.int64 and y.shape == (64,) and 0 <= int(y.min()) and int(y.max()) < 5
        assert torch.equal(y, task.teacher(x).argmax(1))
        _, yb = task.sample("train", 4096, None, _gen(1))
        assert torch.bincount(yb, minlength=5).min() > 0  # every class occurs
    else:
        assert y.dtype == torch.float32 and y.shape == (64, 5)
        resid = y - task.teacher(x)
        assert 0.05 < float(resid.std()) < 0.2  # small noise around the teacher

    val = task.val_batches(4, 32)
    again = same.val_batches(4, 32, 128)
    assert len(val) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(val, again))
    assert not torch.equal(val[0][0], val[1][0])
    _raises(lambda: task.val_batches(10, 32), "320", "n_val=256")
    _raises(lambda: TeacherTask(kind="ranking"), "ranking")

"""Tests of trainthrough.data: finding and parsing Fashion-MNIST, datasets, shards, batches,
evaluation.

Aspects covered:
- the real files (../shared/data/fashion-mnist): found by explicit path and by
  $TRAINTHROUGH_DATA; shapes, dtypes, label range, class balance, normalisation;
- the search order, with small IDX files written here in temporary folders (HOME,
  XDG_CACHE_HOME, the system folder, the current directory and the repository root all
  redirected): explicit, env, user cache, system, cwd-relative, repo-relative, download;
  a folder missing one file does not count; nothing found -> DatasetNotFound listing
  every place; an explicit path must hold the data itself (no search, no download);
- the download: files land only when complete and MD5-verified (served from file:// here);
- corrupt files: clear errors naming the file and the problem;
- the in-process cache returns fresh tensors and notices a replaced file;
- the synthetic dataset: shapes, determinism, learnability;
- shard: disjoint, complete, balanced, rank checks;
- BatchStream: same seed -> same order, other seed or rank -> other order, epochs cover
  the data, epoch/position bookkeeping and resuming, global RNG untouched;
- evaluate: matches a direct computation, limit, restores train/eval modes, no gradients.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainthrough import data
from trainthrough.data import (
    BadDataFile,
    BatchStream,
    Dataset,
    DatasetNotFound,
    download_fashion_mnist,
    evaluate,
    find_fashion_mnist,
    load_dataset,
    read_idx,
    shard,
)
from trainthrough.model import build_model

REAL = (Path(__file__).resolve().parents[1] / "../shared/data/fashion-mnist").resolve()
needs_real = pytest.mark.skipif(
    not all((REAL / name).is_file() for name in data.FILE_NAMES), reason=f"no Fashion-MNIST at {REAL}"
)


# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_dir(folder: Path, n_train: int = 6, n_test: int = 4) -> Path:
    """A folder with the four files holding n_train / n_test tiny images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_train)
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = data.FILES[split]
        write_idx(folder / images_name, rng.integers(0, 256, (n, 28, 28)), data.IMAGES_MAGIC)
        write_idx(folder / labels_name, np.arange(n) % 10, data.LABELS_MAGIC)
    return folder


def indexed(n: int) -> Dataset:
    """n tiny samples whose labels are their indices, to see which samples a batch holds."""
    return Dataset(torch.zeros(n, 1, 28, 28), torch.arange(n))


class Places:
    """Every place of the search path redirected under tmp_path; the download disabled."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.explicit = tmp_path / "explicit"
        self.env = tmp_path / "env"
        self.cache = tmp_path / "xdg" / "trainthrough" / "fashion-mnist"
        self.system = tmp_path / "system"
        cwd, repo = tmp_path / "a" / "cwd", tmp_path / "b" / "repo"
        cwd.mkdir(parents=True)
        repo.mkdir(parents=True)
        self.cwd_relative = tmp_path / "a" / "shared" / "data" / "fashion-mnist"
        self.repo_relative = tmp_path / "b" / "shared" / "data" / "fashion-mnist"
        self.downloads: list[Path] = []

        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        monkeypatch.delenv(data.ENV_VAR, raising=False)
        monkeypatch.setattr(data, "SYSTEM_DIR", self.system)
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(data, "_repo_root", lambda: repo)
        monkeypatch.setattr(data, "download_fashion_mnist", self._download)
        self.download_result: Path | None = None

    def _download(self, folder: Path) -> Path:
        self.downloads.append(folder)
        if self.download_result is None:
            raise OSError("no network in this test")
        return self.download_result


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Places:
    return Places(tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_train() -> Dataset:
    return load_dataset("fashion-mnist", "train", path=str(REAL))


@needs_real
def test_real_found_by_explicit_path_and_env(places: Places, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_fashion_mnist(str(REAL)) == REAL
    monkeypatch.setenv(data.ENV_VAR, str(REAL))
    assert find_fashion_mnist() == REAL
    assert len(load_dataset("fashion-mnist", "test")) == 10_000
    assert places.downloads == []


@needs_real
def test_real_train_split(real_train: Dataset) -> None:
    assert real_train.images.shape == (60_000, 1, 28, 28)
    assert real_train.images.dtype == torch.float32
    assert real_train.labels.shape == (60_000,) and real_train.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(real_train.labels), torch.full((10,), 6000))
    # MEAN and STD are the training set's own statistics.
    assert abs(real_train.images.mean().item()) < 0.01
    assert abs(real_train.images.std().item() - 1) < 0.01


@needs_real
def test_real_test_split() -> None:
    test = load_dataset("fashion-mnist", "test", path=REAL)
    assert test.images.shape == (10_000, 1, 28, 28)
    assert int(test.labels.min()) == 0 and int(test.labels.max()) == 9
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))


@needs_real
def test_evaluate_paper_cnn_on_real_data(real_train: Dataset) -> None:
    accuracy, loss = evaluate(build_model("paper-cnn", 0), real_train, batch_size=256, limit=512)
    assert 0.0 <= accuracy <= 1.0
    assert 1.5 < loss < 3.5  # an untrained 10-way classifier: about ln 10


# ----------------------------------------------------------------------------- searching


def test_search_order(places: Places, monkeypatch: pytest.MonkeyPatch) -> None:
    order = [places.explicit, places.env, places.cache, places.system, places.cwd_relative, places.repo_relative]
    for folder in order:
        make_fashion_dir(folder)
    monkeypatch.setenv(data.ENV_VAR, str(places.env))

    assert find_fashion_mnist(places.explicit) == places.explicit
    assert find_fashion_mnist() == places.env
    monkeypatch.delenv(data.ENV_VAR)
    for found, next_one in itertools.pairwise(order[2:]):
        assert find_fashion_mnist() == found
        (found / data.FILE_NAMES[0]).unlink()
        assert find_fashion_mnist() == next_one
    assert places.downloads == []


def test_falls_back_to_download_into_the_user_cache(places: Places) -> None:
    places.download_result = make_fashion_dir(places.cache.parent / "downloaded")
    assert find_fashion_mnist() == places.download_result
    assert places.downloads == [places.cache]


def test_incomplete_folder_does_not_count(places: Places) -> None:
    make_fashion_dir(places.cache)
    (places.cache / "t10k-labels-idx1-ubyte.gz").unlink()
    make_fashion_dir(places.system)
    assert find_fashion_mnist() == places.system


def test_an_explicit_path_must_hold_the_data_itself(places: Places) -> None:
    """No search and no download past a path asked for by name (spec.dataPath)."""
    make_fashion_dir(places.explicit)
    (places.explicit / "t10k-labels-idx1-ubyte.gz").unlink()
    make_fashion_dir(places.system)
    with pytest.raises(DatasetNotFound, match=r"it does not hold t10k-labels-idx1-ubyte.gz; nothing is searched or downloaded"):
        find_fashion_mnist(places.explicit)
    with pytest.raises(DatasetNotFound, match="no such folder"):
        find_fashion_mnist(places.explicit / "nowhere")
    assert places.downloads == []


def test_nothing_found_lists_every_place(places: Places, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(places.env))
    make_fashion_dir(places.cache)
    (places.cache / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFound) as info:
        find_fashion_mnist()
    message = str(info.value)
    for folder in (places.env, places.cache, places.system, places.cwd_relative, places.repo_relative):
        assert str(folder) in message
    assert "missing train-images-idx3-ubyte.gz" in message
    assert "no network in this test" in message
    assert len(info.value.searched) == 6  # five folders and the download
    assert places.downloads == [places.cache]


def test_no_download_when_disabled(places: Places) -> None:
    with pytest.raises(DatasetNotFound, match="download: disabled"):
        find_fashion_mnist(download=False)
    assert places.downloads == []


def test_user_cache_follows_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.user_cache_dir() == tmp_path / "xdg" / "trainthrough" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.user_cache_dir() == tmp_path / "home" / ".cache" / "trainthrough" / "fashion-mnist"


# ----------------------------------------------------------------------------- downloading


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file:// "server" holding tiny files, with their MD5s made the expected ones."""
    source = make_fashion_dir(tmp_path / "server")
    for name in data.FILE_NAMES:
        monkeypatch.setitem(data.MD5, name, hashlib.md5((source / name).read_bytes()).hexdigest())
    return source.as_uri() + "/"


def test_download_verifies_and_renames(tmp_path: Path, served: str) -> None:
    target = tmp_path / "cache"
    assert download_fashion_mnist(target, base_url=served) == target
    assert sorted(os.listdir(target)) == sorted(data.FILE_NAMES)
    assert len(load_dataset("fashion-mnist", "train", path=target)) == 6


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data.MD5, data.FILE_NAMES[0], "0" * 32)
    target = tmp_path / "cache"
    with pytest.raises(BadDataFile, match="MD5"):
        download_fashion_mnist(target, base_url=served)
    assert os.listdir(target) == []


def test_download_keeps_files_already_there(tmp_path: Path, served: str) -> None:
    target = tmp_path / "cache"
    target.mkdir()
    (target / data.FILE_NAMES[0]).write_bytes(b"kept")
    download_fashion_mnist(target, base_url=served)
    assert (target / data.FILE_NAMES[0]).read_bytes() == b"kept"
    assert sorted(os.listdir(target)) == sorted(data.FILE_NAMES)


# ----------------------------------------------------------------------------- parsing


def test_read_idx_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    write_idx(tmp_path / "i.gz", images, data.IMAGES_MAGIC)
    assert np.array_equal(read_idx(tmp_path / "i.gz", data.IMAGES_MAGIC), images)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not gzip at all", "not a valid gzip file"),
        (gzip.compress(b"\x00\x00"), "too short"),
        (gzip.compress((2049).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x00"), "magic number 2049, expected 2051"),
        (
            gzip.compress(b"".join(v.to_bytes(4, "big") for v in (2051, 1, 27, 28)) + bytes(27 * 28)),
            "27x28, expected 28x28",
        ),
        (
            gzip.compress(b"".join(v.to_bytes(4, "big") for v in (2051, 2, 28, 28)) + bytes(28 * 28)),
            "784 data bytes",
        ),
        (gzip.compress(b"".join(v.to_bytes(4, "big") for v in (2051, 0, 28, 28))), "no items"),
        (gzip.compress(b"".join(v.to_bytes(4, "big") for v in (2051, 1, 28, 28)) + bytes(10))[:-12], "gzip"),
    ],
    ids=["not-gzip", "short-header", "labels-magic", "27x28", "truncated", "empty", "truncated-gzip"],
)
def test_corrupt_image_file(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(BadDataFile, match=problem) as info:
        read_idx(path, data.IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_corrupt_file_found_by_load_dataset(tmp_path: Path) -> None:
    folder = make_fashion_dir(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(BadDataFile, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", "test", path=folder)


def test_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    folder = make_fashion_dir(tmp_path / "d", n_train=6)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5), data.LABELS_MAGIC)
    with pytest.raises(BadDataFile, match="6 images but .* 5 labels"):
        load_dataset("fashion-mnist", "train", path=folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 10]), data.LABELS_MAGIC)
    with pytest.raises(BadDataFile, match="label 10 outside 0..9"):
        load_dataset("fashion-mnist", "train", path=folder)


def test_normalisation_and_cache(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    pixels = np.zeros((2, 28, 28))
    pixels[1] = 255
    write_idx(folder / "t10k-images-idx3-ubyte.gz", pixels, data.IMAGES_MAGIC)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([3, 7]), data.LABELS_MAGIC)
    for name in data.FILES["train"]:
        (folder / name).write_bytes(b"not read for the test split")

    first = load_dataset("fashion-mnist", "test", path=folder)
    assert torch.allclose(first.images[0], torch.full((1, 28, 28), -data.MEAN / data.STD))
    assert torch.allclose(first.images[1], torch.full((1, 28, 28), (1 - data.MEAN) / data.STD))
    assert first.labels.tolist() == [3, 7]

    # Cached decoding, but every call gets its own tensors.
    first.images.zero_()
    second = load_dataset("fashion-mnist", "test", path=folder)
    assert second.images[0, 0, 0, 0] != 0
    # A replaced file is read again.
    write_idx(folder / "t10k-images-idx3-ubyte.gz", pixels[:1], data.IMAGES_MAGIC)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([3]), data.LABELS_MAGIC)
    assert len(load_dataset("fashion-mnist", "test", path=folder)) == 1


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match="fashion-mnist, synthetic"):
        load_dataset("cifar", "train")
    with pytest.raises(ValueError, match="validation"):
        load_dataset("synthetic", "validation")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism() -> None:
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    assert train.images.shape == (2000, 1, 28, 28) and test.images.shape == (500, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 200))
    again = load_dataset("synthetic", "train")
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert train.images.data_ptr() != again.images.data_ptr()


def test_synthetic_is_learnable() -> None:
    model = build_model("mlp", 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    stream = BatchStream(load_dataset("synthetic", "train"), 32, seed=0)
    for images, labels in itertools.islice(stream, 50):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    accuracy, _ = evaluate(model, load_dataset("synthetic", "test"))
    assert accuracy > 0.9


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_and_complete(world: int) -> None:
    dataset = indexed(100)
    shards = [shard(dataset, rank, world) for rank in range(world)]
    seen = torch.cat([s.labels for s in shards])
    assert sorted(seen.tolist()) == list(range(100))  # complete, and no sample twice
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    for s in shards:
        assert len(s.images) == len(s.labels)


@pytest.mark.parametrize(("rank", "world"), [(-1, 2), (2, 2), (0, 0)])
def test_shard_rejects_bad_rank(rank: int, world: int) -> None:
    with pytest.raises(ValueError):
        shard(indexed(10), rank, world)


# ----------------------------------------------------------------------------- batching


def order(stream: BatchStream, batches: int) -> list[list[int]]:
    return [labels.tolist() for _, labels in itertools.islice(stream, batches)]


def test_same_seed_same_order_other_seed_or_rank_other_order() -> None:
    dataset = indexed(50)
    base = order(BatchStream(dataset, 8, seed=3, rank=1), 20)  # past three epoch boundaries
    assert base == order(BatchStream(dataset, 8, seed=3, rank=1), 20)
    assert base != order(BatchStream(dataset, 8, seed=4, rank=1), 20)
    assert base != order(BatchStream(dataset, 8, seed=3, rank=0), 20)


def test_each_epoch_is_a_new_permutation_of_everything() -> None:
    stream = BatchStream(indexed(40), 10, seed=0)
    epochs = [sum(order(stream, 4), []) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(40))
    assert epochs[0] != epochs[1] != epochs[2]


def test_epoch_and_position() -> None:
    stream = BatchStream(indexed(10), 4, seed=0)  # drop_last: two batches per epoch
    assert (stream.epoch, stream.position) == (0, 0)
    images, labels = next(stream)
    assert images.shape == (4, 1, 28, 28) and labels.shape == (4,)
    assert (stream.epoch, stream.position) == (0, 4)
    next(stream)
    assert (stream.epoch, stream.position) == (1, 0)


def test_keep_last_partial_batch() -> None:
    stream = BatchStream(indexed(10), 4, seed=0, drop_last=False)
    assert [len(b) for b in order(stream, 4)] == [4, 4, 2, 4]
    assert (stream.epoch, stream.position) == (1, 4)


def test_resume_from_epoch_and_position() -> None:
    dataset = indexed(30)
    stream = BatchStream(dataset, 7, seed=9, rank=2)
    order(stream, 6)
    resumed = BatchStream(dataset, 7, seed=9, rank=2, epoch=stream.epoch, position=stream.position)
    assert order(resumed, 10) == order(stream, 10)


def test_batch_stream_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    order(BatchStream(indexed(20), 5, seed=0), 9)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_batch_stream_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="no batch"):
        BatchStream(indexed(3), 4, seed=0)
    with pytest.raises(ValueError):
        BatchStream(indexed(3), 0, seed=0)
    with pytest.raises(ValueError, match="position"):
        BatchStream(indexed(8), 4, seed=0, position=8)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_matches_direct_computation() -> None:
    dataset = load_dataset("synthetic", "test")
    model = build_model("mlp", 1)
    model.eval()
    with torch.no_grad():
        logits = model(dataset.images)
    accuracy = (logits.argmax(1) == dataset.labels).float().mean().item()
    loss = F.cross_entropy(logits, dataset.labels).item()

    got_accuracy, got_loss = evaluate(model, dataset, batch_size=64)  # 500 is not a multiple
    assert got_accuracy == pytest.approx(accuracy)
    assert got_loss == pytest.approx(loss, rel=1e-5)

    limited, _ = evaluate(model, dataset, limit=100)
    assert limited == pytest.approx((logits[:100].argmax(1) == dataset.labels[:100]).float().mean().item())


def test_evaluate_restores_modes_and_takes_no_gradients() -> None:
    dataset = load_dataset("synthetic", "test")
    model = build_model("paper-cnn", 0)
    model.train()
    evaluate(model, dataset, limit=50)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())

    model.eval()
    dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    dropout.train()  # a mixed state is restored exactly
    evaluate(model, dataset, limit=50)
    assert [m.training for m in model.modules()] == [m is dropout for m in model.modules()]


def test_evaluate_is_deterministic_with_dropout() -> None:
    dataset = load_dataset("synthetic", "test")
    model = build_model("paper-cnn", 0)
    model.train()
    assert evaluate(model, dataset, limit=100) == evaluate(model, dataset, limit=100)


def test_evaluate_rejects_empty() -> None:
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(build_model("mlp", 0), indexed(5), limit=0)

"""Datasets, sharding, batching and evaluation.

Used by the workers (each loads the training split once, takes its shard and draws
batches from a `BatchStream`) and by whatever evaluates a model (the workers' periodic
evaluation, the benchmark harness), through `load_dataset`, `shard`, `BatchStream` and
`evaluate`.

Fashion-MNIST is read from the four standard IDX .gz files: from the job's explicit
`dataPath` when it has one (that folder must hold them: no search, no download, in both
runtimes; `data_path_problem` says why one does not count), else found along a fixed search
path (see `find_fashion_mnist`); "synthetic" is a tiny generated dataset of the same shape,
for fast unit tests only.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import logging
import math
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainthrough.errors import TrainthroughError

__all__ = [
    "BadDataFile",
    "BatchStream",
    "DATASETS",
    "Dataset",
    "DatasetError",
    "DatasetNotFound",
    "candidate_dirs",
    "data_path_problem",
    "download_fashion_mnist",
    "evaluate",
    "find_fashion_mnist",
    "load_dataset",
    "read_idx",
    "shard",
    "user_cache_dir",
]

log = logging.getLogger(__name__)

NUM_CLASSES = 10
# Mean and standard deviation of the Fashion-MNIST training pixels scaled to [0, 1].
MEAN = 0.2860
STD = 0.3530

DATASETS = ("fashion-mnist", "synthetic")
SPLITS = ("train", "test")
Split = Literal["train", "test"]

# split -> (images file, labels file)
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(name for pair in FILES.values() for name in pair)
# MD5 of the official files; checked on download only (Debian's copies differ in the
# gzip header, so files found on disk are validated by parsing instead).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_VAR = "TRAINTHROUGH_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
SHARED_RELATIVE = Path("../shared/data/fashion-mnist")

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
IMAGE_SIZE = (28, 28)


class DatasetError(TrainthroughError):
    """Base of the errors this module raises about data."""


class DatasetNotFound(DatasetError):
    """No folder holds all four files and the download failed; `.searched` lists where
    it looked and why each place did not count."""

    def __init__(self, message: str, searched: list[str]) -> None:
        super().__init__(message)
        self.searched = searched


class BadDataFile(DatasetError, ValueError):
    """A data file exists but is not what it should be; the message names the file."""


# ----------------------------------------------------------------------------- finding


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/trainthrough/fashion-mnist`, or under `~/.cache` when unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "trainthrough" / "fashion-mnist"


def _repo_root() -> Path | None:
    """The folder holding pyproject.toml above this file; None when installed elsewhere."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def candidate_dirs() -> list[tuple[str, Path]]:
    """The folders `find_fashion_mnist` searches without an explicit path, in order, each
    with a short description."""
    candidates: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        candidates.append((f"${ENV_VAR}", Path(env)))
    candidates.append(("user cache", user_cache_dir()))
    candidates.append(("system datasets", SYSTEM_DIR))
    candidates.append(("shared data relative to the current directory", Path.cwd() / SHARED_RELATIVE))
    root = _repo_root()
    if root is not None:
        candidates.append(("shared data relative to the repository", root / SHARED_RELATIVE))
    return [(label, Path(os.path.abspath(path.expanduser()))) for label, path in candidates]


def _missing(folder: Path) -> list[str]:
    # os.path.isfile swallows every OSError (a folder we may not read counts as absent).
    return [name for name in FILE_NAMES if not os.path.isfile(folder / name)]


def _why_not(folder: Path) -> str | None:
    missing = _missing(folder)
    if not missing:
        return None
    return "no such folder" if not folder.is_dir() else "missing " + ", ".join(missing)


def data_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why an explicit data path (spec.dataPath) does not hold Fashion-MNIST, or None.

    The one rule of both runtimes: a path asked for by name must hold the four files, on
    this machine for `trainthrough run`, inside the worker pod on a cluster (a volume the
    pod template mounts there). Nothing is searched or downloaded instead: an air-gapped
    cluster has no network, and a silent fallback would train on other data."""
    folder = Path(os.path.abspath(Path(path).expanduser()))
    missing = _missing(folder)
    if not missing:
        return None
    return f"{folder}: no such folder" if not folder.is_dir() else f"{folder}: it does not hold {', '.join(missing)}"


def find_fashion_mnist(explicit: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST IDX .gz files.

    With `explicit` (spec.dataPath): that folder, which must hold them (else
    `DatasetNotFound` saying why: no search, no download; see data_path_problem).
    Without: looks in `$TRAINTHROUGH_DATA`, the user cache, /usr/share/datasets/
    fashion-mnist, ../shared/data/fashion-mnist from the current directory and from the
    repository root; a folder counts only if all four files are there. Failing that (and
    if `download`), downloads the official files into the user cache. Raises
    `DatasetNotFound` listing every place looked at.
    """
    if explicit is not None:
        problem = data_path_problem(explicit)
        if problem is not None:
            raise DatasetNotFound(f"Fashion-MNIST: the data path {problem}; nothing is searched or downloaded instead", [problem])
        return Path(os.path.abspath(Path(explicit).expanduser()))
    searched: list[str] = []
    seen: set[Path] = set()
    for label, folder in candidate_dirs():
        if folder in seen:
            continue
        seen.add(folder)
        why = _why_not(folder)
        if why is None:
            return folder
        searched.append(f"{label} {folder}: {why}")
        if label == f"${ENV_VAR}":
            # Asked for by name, so worth saying out loud that it is being passed over.
            log.warning("Fashion-MNIST: %s %s does not count (%s); searching on", label, folder, why)

    if download:
        cache = user_cache_dir()
        try:
            return download_fashion_mnist(cache)
        except (OSError, http.client.HTTPException, DatasetError) as exc:
            searched.append(f"download from {DOWNLOAD_URL} into {cache}: failed ({exc})")
    else:
        searched.append("download: disabled")
    lines = "\n  ".join(searched)
    raise DatasetNotFound(
        f"Fashion-MNIST not found; looked at:\n  {lines}\n"
        f"Put the four files ({', '.join(FILE_NAMES)}) in a folder and set ${ENV_VAR} to it, "
        "or `apt-get install dataset-fashion-mnist`.",
        searched,
    )


def download_fashion_mnist(
    folder: Path | None = None,
    *,
    base_url: str = DOWNLOAD_URL,
    urlopen: Callable[..., Any] = urllib.request.urlopen,
) -> Path:
    """Download the files missing from `folder` (default: the user cache), verifying MD5.

    Each file goes to a temporary file in `folder` first and is renamed into place only
    once complete and verified, so an interrupted download never leaves a bad file.
    """
    folder = user_cache_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILE_NAMES:
        target = folder / name
        if target.is_file():
            continue
        url = base_url + name
        log.info("downloading %s to %s", url, target)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != MD5[name]:
                raise BadDataFile(f"{url}: MD5 {digest.hexdigest()}, expected {MD5[name]}")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return folder


# ----------------------------------------------------------------------------- parsing


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Parse one gzip-compressed IDX file of unsigned bytes into a read-only uint8 array.

    `magic` is IMAGES_MAGIC ([N, 28, 28]) or LABELS_MAGIC ([N]). Anything unexpected is a
    `BadDataFile` naming the file and what is wrong with it.
    """
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[magic]
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise BadDataFile(f"{path}: not a valid gzip file ({exc})") from exc
    header = 4 + 4 * ndim
    # The magic first: a labels file passed as images should say so, not "too short".
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found is not None and found != magic:
        raise BadDataFile(f"{path}: magic number {found}, expected {magic}")
    if len(raw) < header:
        raise BadDataFile(f"{path}: {len(raw)} bytes, too short for an IDX header of {header} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[0] == 0:
        raise BadDataFile(f"{path}: the header says it holds no items")
    if ndim == 3 and dims[1:] != IMAGE_SIZE:
        raise BadDataFile(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    body = len(raw) - header
    if body != math.prod(dims):
        raise BadDataFile(f"{path}: {body} data bytes, but the header's shape {list(dims)} needs {math.prod(dims)}")
    # frombuffer over immutable bytes: read-only, which protects the in-process cache.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def _decoded(folder: Path, split: str, stamp: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    # `stamp` (mtime, size of both files) is only part of the key: a replaced file is re-read.
    del stamp
    images_path, labels_path = (folder / name for name in FILES[split])
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise BadDataFile(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.max() >= NUM_CLASSES:
        raise BadDataFile(f"{labels_path}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    return images, labels


def _stamp(folder: Path, split: str) -> tuple[tuple[int, int], ...]:
    stats = (os.stat(folder / name) for name in FILES[split])
    return tuple((st.st_mtime_ns, st.st_size) for st in stats)


# ----------------------------------------------------------------------------- datasets


@dataclass(eq=False)
class Dataset:
    """Images float32 [N, 1, 28, 28], normalised ((x/255 - MEAN) / STD); labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the standardised values the models see."""
    return (pixels - MEAN) / STD


SYNTHETIC_SIZES = {"train": 2000, "test": 500}
SYNTHETIC_SEED = 2406_05546
SYNTHETIC_NOISE = 0.35


@functools.lru_cache(maxsize=1)
def _synthetic() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    # One fixed random template per class plus per-image noise: learnable in a few steps.
    # Both splits come from one generator in a fixed order, so they share the templates.
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    templates = torch.rand(NUM_CLASSES, 1, *IMAGE_SIZE, generator=g)
    out = {}
    for split in SPLITS:
        n = SYNTHETIC_SIZES[split]
        labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=g)]
        noise = SYNTHETIC_NOISE * torch.randn(n, 1, *IMAGE_SIZE, generator=g)
        out[split] = (_normalise((templates[labels] + noise).clamp_(0.0, 1.0)), labels)
    return out


def load_dataset(name: str, split: Split, path: str | os.PathLike[str] | None = None) -> Dataset:
    """Load split "train" or "test" of dataset "fashion-mnist" or "synthetic".

    `path` is the explicit Fashion-MNIST folder (it must hold the files: no search);
    "synthetic" ignores it. Decoded files are cached in-process; each call returns fresh tensors.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name == "synthetic":
        images, labels = _synthetic()[split]
        return Dataset(images.clone(), labels.clone())
    if name == "fashion-mnist":
        folder = find_fashion_mnist(path)
        log.info("Fashion-MNIST %s split: loading from %s", split, folder)
        raw_images, raw_labels = _decoded(folder, split, _stamp(folder, split))
        pixels = torch.from_numpy(raw_images.astype(np.float32)).div_(255.0)  # astype copies
        return Dataset(_normalise(pixels).unsqueeze(1), torch.from_numpy(raw_labels.astype(np.int64)))
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Worker `rank`'s part of `dataset` among `world` workers: a contiguous block.

    The blocks are disjoint, cover the dataset and differ in size by at most one. They are
    views, not copies. (The Fashion-MNIST files are in random class order already.)
    """
    if world < 1:
        raise ValueError(f"world size must be at least 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    n = len(dataset)
    start, end = rank * n // world, (rank + 1) * n // world
    return Dataset(dataset.images[start:end], dataset.labels[start:end])


# ----------------------------------------------------------------------------- batching


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    # SeedSequence mixes the three numbers well, so nearby (seed, rank, epoch) triples
    # give unrelated permutations; 63 bits fit torch.Generator.manual_seed.
    words = np.random.SeedSequence([seed, rank, epoch]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & (2**63 - 1)


class BatchStream:
    """Endless (images, labels) batches, reshuffled every epoch.

    The order depends only on (seed, rank, epoch), so a run repeats with the same seed and
    a restarted worker can resume at its (epoch, position):

    >>> stream = BatchStream(shard(train, rank, world), batch_size=32, seed=7, rank=rank)
    >>> images, labels = next(stream)
    >>> stream.epoch, stream.position        # where the next batch starts
    (0, 32)

    With `drop_last` (the default) every batch is full and the remainder of an epoch's
    permutation is skipped; a different permutation next epoch uses it.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        epoch: int = 0,
        position: int = 0,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if seed < 0 or rank < 0 or epoch < 0:
            raise ValueError(f"seed, rank and epoch must be non-negative, got {seed}, {rank}, {epoch}")
        n = len(dataset)
        self._epoch_samples = (n // batch_size) * batch_size if drop_last else n
        if self._epoch_samples == 0:
            raise ValueError(f"dataset of {n} samples yields no batch of {batch_size}")
        if not 0 <= position < self._epoch_samples:
            raise ValueError(f"position {position} outside [0, {self._epoch_samples})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch = epoch
        self.position = position
        self._perm: torch.Tensor | None = None
        self._perm_epoch = -1

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.rank, self.epoch))
            self._perm = torch.randperm(len(self.dataset), generator=g)
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._permutation()[self.position : self.position + self.batch_size]
        batch = (self.dataset.images[index], self.dataset.labels[index])
        self.position += len(index)
        if self.position >= self._epoch_samples:
            self.epoch += 1
            self.position = 0
        return batch


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 1000, limit: int | None = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on the first `limit` samples (default all).

    Runs in eval mode under no_grad on the model's device, then puts every submodule back
    in the train/eval mode it had.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n <= 0:
        raise ValueError(f"nothing to evaluate: {len(dataset)} samples, limit {limit}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    device = next(model.parameters(), torch.empty(0)).device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            # Summed on the device; one synchronisation at the end.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for start in range(0, n, batch_size):
                end = min(start + batch_size, n)
                images = dataset.images[start:end].to(device, non_blocking=True)
                labels = dataset.labels[start:end].to(device, non_blocking=True)
                logits = model(images)
                loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
                correct += (logits.argmax(dim=1) == labels).sum()
            accuracy, loss = correct.item() / n, loss_sum.item() / n
    finally:
        for module, training in modes:
            module.training = training
    return accuracy, loss

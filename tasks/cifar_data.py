"""CIFAR-10 images as in-memory uint8 tensors, and batched augmentation on the worker axis.

Data sets (`load_images`):
- `cifar10`: Krizhevsky 2009, 50,000 training and 10,000 test images, 32×32 RGB, 10 classes,
  through torchvision's CIFAR10 in `<cache>/cifar10/` (`<cache>` is $COMMSGD_DATA, default
  ~/.cache/commsgd). torchvision checks the md5 of the archive and of every extracted batch file.
  Download is attempted only when the extracted files are missing or fail their checksums;
  offline, DatasetUnavailableError names the exact path to put cifar-10-python.tar.gz at.
- `fake`: torchvision's FakeData with CIFAR's shapes (3×32×32, 10 classes). Every image is a
  pure function of its index and FakeData's `random_offset`, which `data_seed` sets (the test
  images use offsets past the training ones, so the two sets never share an image). Labels are
  random: a network can memorise them, not generalise.

Both are held whole as uint8 [n, 3, 32, 32] (CIFAR-10: 150 MB) plus int64 labels.

Augmentation (`augment`): the standard CIFAR recipe of He et al. 2016, §4.2: pad 4 pixels on
each side with zeros, take a random 32×32 crop, flip horizontally with probability 1/2. It is
done on the whole [w·b, 3, 32, 32] batch at once by one gather whose row and column indices
encode crop offset and flip, and its randomness comes from per-worker uniforms the caller
draws from the workers' own streams: reproducible, and identical however the workers are
spread over processes (torchvision's PIL transforms are per image and use the global RNG).
"""

from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from tasks.libsvm import DatasetChecksumError, DatasetUnavailableError

DATASETS = ("cifar10", "fake")
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
PAD = 4
# Per-channel mean and standard deviation of the CIFAR-10 training images, on [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


class Images(NamedTuple):
    train_x: torch.Tensor  # [n, 3, 32, 32] uint8
    train_y: torch.Tensor  # [n] int64
    test_x: torch.Tensor
    test_y: torch.Tensor


def data_dir() -> Path:
    """`<cache>/cifar10`: $COMMSGD_DATA if set, else ~/.cache/commsgd."""
    env = os.environ.get("COMMSGD_DATA")
    root = Path(env) if env else Path.home() / ".cache" / "commsgd"
    return root.expanduser() / "cifar10"


def load_images(dataset: str, *, data_seed: int = 0, fake_size: int = 512,
                fake_test_size: int = 128) -> Images:
    if dataset == "cifar10":
        return load_cifar10(data_dir())
    if dataset == "fake":
        return load_fake(fake_size, fake_test_size, data_seed)
    raise ValueError(f"task.dataset={dataset!r}: allowed values are {', '.join(DATASETS)}")


@functools.lru_cache(maxsize=2)
def load_fake(train_size: int, test_size: int, seed: int) -> Images:
    """FakeData with CIFAR's shapes; image i of the training set is seeded by seed·2³² + i."""
    from torchvision.datasets import FakeData

    if train_size < 1 or test_size < 1:
        raise ValueError(f"task.fake_size={train_size}, task.fake_test_size={test_size}: "
                         "both must be >= 1")
    offset = int(seed) << 32
    train = FakeData(train_size, IMAGE_SHAPE, NUM_CLASSES, random_offset=offset)
    test = FakeData(test_size, IMAGE_SHAPE, NUM_CLASSES, random_offset=offset + train_size)
    return Images(*_stack(train), *_stack(test))


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    x = np.stack([np.asarray(img, dtype=np.uint8) for img in images])  # [n, 32, 32, 3]
    return _to_tensors(x, labels)


def _to_tensors(x_nhwc: np.ndarray, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    return x, torch.as_tensor(np.asarray(labels), dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def load_cifar10(root: Path) -> Images:
    """The CIFAR-10 train and test sets from `root`, fetched into it first if missing."""
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        _fetch(root)
        train = CIFAR10(str(root), train=True, download=False)
    test = CIFAR10(str(root), train=False, download=False)
    return Images(*_to_tensors(train.data, train.targets), *_to_tensors(test.data, test.targets))


def _fetch(root: Path) -> None:
    """Extract the archive at root/ARCHIVE, downloading it first only if it is not there."""
    from torchvision.datasets import CIFAR10

    archive = root / ARCHIVE
    if archive.exists():
        actual = _md5(archive)
        if actual != ARCHIVE_MD5:
            raise DatasetChecksumError(
                f"CIFAR-10: {archive} has md5 {actual}, expected {ARCHIVE_MD5} (a truncated or "
                f"different file). Delete it and run again to download it, or replace it with "
                f"{ARCHIVE_URL}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        # With a verified archive in place torchvision only extracts it (and checks the
        # extracted files' md5); otherwise it downloads, then checks the archive's md5.
        CIFAR10(str(root), train=True, download=True)
    except (urllib.error.URLError, OSError) as exc:  # offline, DNS, refused, timeouts
        raise DatasetUnavailableError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(exc).__name__}: "
            f"{exc}). Download {ARCHIVE_URL} (md5 {ARCHIVE_MD5}) yourself and put it at "
            f"{archive}, unchanged; the next run checks and extracts it.") from exc
    except RuntimeError as exc:  # torchvision: "File not found or corrupted."
        raise DatasetChecksumError(
            f"CIFAR-10: the download to {archive} failed its md5 check ({exc}); delete it and "
            f"try again, or put a copy of {ARCHIVE_URL} (md5 {ARCHIVE_MD5}) there") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def augment(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Random 32×32 crop of the 4-pixel zero-padded image, then a random horizontal flip.

    images: [N, C, 32, 32] (any dtype); u: [N, 3] uniforms on [0, 1): vertical offset,
    horizontal offset (each uniform on 0..8) and flip (u < 1/2). Returns [N, C, 32, 32].
    One gather does all three: output pixel (i, j) reads padded pixel (dy + i, dx + j), or
    (dy + i, dx + 31 − j) when flipped.
    """
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    offsets = (u[:, :2] * (2 * PAD + 1)).long().clamp_max(2 * PAD)
    flip = u[:, 2] < 0.5
    dev = images.device
    rows = offsets[:, 0:1] + torch.arange(h, device=dev)  # [N, h]
    j = torch.arange(w, device=dev)
    cols = offsets[:, 1:2] + torch.where(flip[:, None], w - 1 - j, j)  # [N, w]
    # flatten (row, col) of the padded image into one index per output pixel
    flat = rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]  # [N, h, w]
    src = padded.flatten(2)  # [N, C, (h+2P)(w+2P)]
    index = flat.flatten(1)[:, None, :].expand(-1, src.shape[1], -1)
    return src.gather(2, index).view(n, -1, h, w)


def normalise(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [..., 3, H, W] → (x/255 − mean)/std in `dtype`."""
    mean = torch.tensor(MEAN, dtype=dtype, device=images.device)[:, None, None]
    std = torch.tensor(STD, dtype=dtype, device=images.device)[:, None, None]
    return (images.to(dtype) / 255.0 - mean) / std

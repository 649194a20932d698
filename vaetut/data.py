"""Data sets, as float32 tensors of flattened images in [0, 1].

The default everywhere is scikit-learn's bundled 8x8 handwritten digits (1,797 real
images, shipped with the package, no download). MNIST is read from its standard IDX
files when a reader has them.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

BINARIZE = (None, "fixed", "stochastic")
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    """A train/test split. Images are (N, H*W) float32 in [0, 1]; labels (N,) int64.

    binarize records how the pixels were made binary: None (grey levels), "fixed"
    (thresholded at 0.5) or "stochastic" (train kept grey, to be resampled as
    Bernoulli(x) each epoch by `fit(..., stochastic_binarization=True)`; test
    binarized once with a fixed seed).
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    image_shape: tuple[int, int]
    binarize: str | None = None

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]


def binarize_fixed(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """1 where the intensity exceeds `threshold`, else 0."""
    return (x > threshold).to(x.dtype)


def binarize_stochastic(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of Bernoulli(x) per pixel (dynamic binarization, Burda et al. 2015)."""
    return torch.bernoulli(x, generator=generator)


def _apply_binarize(train, test, binarize, seed):
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {binarize!r}")
    if binarize == "fixed":
        return binarize_fixed(train), binarize_fixed(test)
    if binarize == "stochastic":
        return train, binarize_stochastic(test, torch.Generator().manual_seed(seed))
    return train, test


def load_digits(binarize: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1], split by a seeded permutation.

    With the default test_fraction of 0.2: 1,437 training and 360 test images.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = sklearn_digits()
    images = torch.tensor(bunch.data / 16.0, dtype=torch.float32)  # (1797, 64), 17 grey levels
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = math.ceil(test_fraction * len(images))  # as scikit-learn rounds a test fraction
    if n_test >= len(images):
        raise ValueError(f"test_fraction={test_fraction!r} leaves 0 training images of "
                         f"{len(images)}; use a test_fraction of at most "
                         f"{(len(images) - 1) / len(images):.4f}")
    test_idx, train_idx = order[:n_test], order[n_test:]
    train, test = _apply_binarize(images[train_idx], images[test_idx], binarize, seed)
    return Dataset(train, labels[train_idx], test, labels[test_idx], (8, 8), binarize)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or raw, as a uint8 array.

    A malformed file (a damaged .gz, a header shorter than it claims, a body of another
    size than the header says) is a ValueError naming the file and what is wrong."""
    if str(path).endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise ValueError(f"{path}: a damaged or incomplete gzip file ({type(err).__name__}: "
                             f"{err or 'ends too early'}); download it again") from err
    else:
        with open(path, "rb") as f:
            data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, n_dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    if n_dims == 0:
        raise ValueError(f"{path}: the IDX header says 0 dimensions; an IDX array has at "
                         "least one")
    if len(data) < 4 + 4 * n_dims:
        raise ValueError(f"{path}: the IDX header says {n_dims} dimensions, which needs "
                         f"{4 + 4 * n_dims} bytes of header, but the file holds "
                         f"{len(data)} bytes")
    shape = struct.unpack(f">{n_dims}I", data[4:4 + 4 * n_dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * n_dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _find_idx(root: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"MNIST file {stem}(.gz) is missing from {os.path.abspath(root)!r}. Download the four "
        "IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, gzipped or not) from Yann LeCun's MNIST page or a mirror of it, "
        "and put them in that folder.")


def load_mnist(root: str | os.PathLike, binarize: str | None = None, seed: int = 0) -> Dataset:
    """MNIST from the four standard IDX files in `root` (60,000 train, 10,000 test)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root must be a folder holding the MNIST IDX files; "
                                f"{os.path.abspath(root)!r} is not a folder")
    paths = {key: _find_idx(root, stem) for key, stem in MNIST_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for key, path in paths.items():
        shape, images_file = arrays[key].shape, key.endswith("images")
        if len(shape) != (3 if images_file else 1):
            raise ValueError(
                f"{path}: an MNIST {'images' if images_file else 'labels'} file has "
                f"{'3 dimensions (N, height, width)' if images_file else '1 dimension (N,)'}, "
                f"this one has shape {shape}; is it the right file?")
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(f"MNIST {split} split has {n_img} images but {n_lab} labels")
        if n_img == 0:
            raise ValueError(f"{paths[f'{split}_images']}: holds no images")
    h, w = arrays["train_images"].shape[1:]
    th, tw = arrays["test_images"].shape[1:]
    if (th, tw) != (h, w):
        raise ValueError(f"{paths['test_images']}: test images are {th}x{tw} but the training "
                         f"images ({paths['train_images']}) are {h}x{w}")

    def images(key):
        return torch.tensor(arrays[key].reshape(len(arrays[key]), -1), dtype=torch.float32) / 255.0

    train, test = _apply_binarize(images("train_images"), images("test_images"), binarize, seed)
    return Dataset(train, torch.tensor(arrays["train_labels"], dtype=torch.int64), test,
                   torch.tensor(arrays["test_labels"], dtype=torch.int64), (h, w), binarize)

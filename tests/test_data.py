import gzip
import os
import re
import struct

import numpy as np
import pytest
import torch

import vaetut
from vaetut.data import load_digits, load_mnist, read_idx


def test_digits_split_is_fixed_disjoint_and_scaled():
    a, b = load_digits(), load_digits()
    assert a.train.shape == (1437, 64) and a.test.shape == (360, 64)
    assert a.train.dtype == torch.float32 and a.train_labels.dtype == torch.int64
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert 0 <= a.train.min() and a.train.max() == 1
    assert len(a.train.unique()) == 17  # the digits have 17 grey levels, 0/16 .. 16/16
    # together the two splits are the whole data set, each image once
    from sklearn.datasets import load_digits as sk
    original = torch.tensor(sk().data / 16.0, dtype=torch.float32)
    both = torch.cat([a.train, a.test])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, original.tolist()))
    other = load_digits(seed=1)
    assert not torch.equal(other.test, a.test)
    assert torch.bincount(a.test_labels, minlength=10).min() > 20  # every digit is in the test set


def test_digits_binarization():
    fixed = load_digits(binarize="fixed")
    grey = load_digits()
    assert set(fixed.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(fixed.train, (grey.train > 0.5).float())
    stochastic = load_digits(binarize="stochastic")
    assert torch.equal(stochastic.train, grey.train)  # resampled each epoch by fit
    assert set(stochastic.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(stochastic.test, load_digits(binarize="stochastic").test)
    with pytest.raises(ValueError, match="binarize"):
        load_digits(binarize="yes")
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


def write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def make_mnist(folder, compress, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if compress else "")), array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_reads_idx_files(tmp_path, compress):
    arrays = make_mnist(tmp_path, compress)
    mnist = load_mnist(tmp_path)
    assert mnist.train.shape == (6, 784) and mnist.test.shape == (4, 784)
    assert mnist.image_shape == (28, 28)
    expected = torch.tensor(arrays["train-images-idx3-ubyte"].reshape(6, -1) / 255.0,
                            dtype=torch.float32)
    torch.testing.assert_close(mnist.train, expected)
    assert mnist.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert set(load_mnist(tmp_path, binarize="fixed").train.unique().tolist()) <= {0.0, 1.0}


def test_load_mnist_names_the_missing_file(tmp_path):
    make_mnist(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*missing from"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist(tmp_path / "nowhere")


def test_read_idx_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.zeros((3, 2)), compress=False)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(short)


def test_mismatched_mnist_split_is_an_error(tmp_path):
    make_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5), compress=False)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        load_mnist(tmp_path)


def test_a_vae_trains_on_mnist_files(tmp_path):
    make_mnist(tmp_path, compress=True, n_train=32, n_test=8)
    mnist = vaetut.data.load_mnist(tmp_path, binarize="fixed")
    model = vaetut.VAE(mnist.x_dim, 2, hidden=(16,))
    history = vaetut.fit(model, mnist.train, mnist.test, epochs=2, batch_size=16,
                         device="cpu", progress=False)
    assert len(history) == 2


@pytest.mark.parametrize("name, array, message", [
    # an image file in the labels slot
    ("train-labels-idx1-ubyte", np.zeros((6, 28, 28)), r"train-labels-idx1-ubyte.*1 dimension.*\(6, 28, 28\)"),
    # a labels file in the images slot
    ("t10k-images-idx3-ubyte", np.zeros(4), r"t10k-images-idx3-ubyte.*3 dimensions"),
    # train and test images of different sizes
    ("t10k-images-idx3-ubyte", np.zeros((4, 20, 20)), r"t10k-images-idx3-ubyte.*20x20.*28x28"),
])
def test_a_file_of_the_wrong_shape_is_named(tmp_path, name, array, message):
    make_mnist(tmp_path, compress=False)
    write_idx(tmp_path / name, array, compress=False)
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path)


def test_an_empty_split_is_refused(tmp_path):
    make_mnist(tmp_path, compress=False, n_test=0)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*no images"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("name, data, says", [
    ("short-header", b"\x00\x00\x08\x03\x00\x00\x00\x02", r"header .*3 dimensions.*8 bytes"),
    ("no-dims", b"\x00\x00\x08\x00\x07", r"0 dimensions"),
    ("empty", b"", r"too short"),
])
def test_read_idx_names_the_file_for_every_malformed_header(tmp_path, name, data, says):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{name}.*{says}"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "bad crc"])
def test_read_idx_names_a_broken_gz_file(tmp_path, damage):
    path = tmp_path / "x-idx1-ubyte.gz"
    write_idx(path, np.arange(100), compress=True)
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif damage == "not gzip":
        path.write_bytes(b"this is not gzip data at all")
    else:
        path.write_bytes(good[:-8] + bytes(8))
    with pytest.raises(ValueError, match=r"x-idx1-ubyte\.gz.*gzip"):
        read_idx(path)


@pytest.mark.parametrize("fraction, empty", [(0.9999, "training"), (1e-5, None)])
def test_digits_split_never_leaves_a_split_empty(fraction, empty):
    if empty is None:  # a tiny fraction still gives one test image
        assert len(load_digits(test_fraction=fraction).test) == 1
        return
    with pytest.raises(ValueError, match=rf"test_fraction=0.9999 leaves 0 {empty} images"):
        load_digits(test_fraction=fraction)


# --- read_idx reads by the header (issue 21, item 5) -------------------------------------

def _gz_stream(path, header, zeros_after, chunk=1 << 22):
    """A .gz of `header` followed by `zeros_after` zero bytes, written without holding them."""
    import zlib
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(c.compress(header))
        block = bytes(chunk)
        for _ in range(zeros_after // chunk):
            f.write(c.compress(block))
        f.write(c.compress(bytes(zeros_after % chunk)))
        f.write(c.flush())


def _idx_header(*shape):
    return struct.pack(">HBB", 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def test_a_gz_with_a_valid_header_and_gigabytes_of_zeros_costs_only_what_it_promises(tmp_path):
    # the file scaled down: a (1000, 28, 28) header (784,000 bytes promised) and
    # 96 MiB of zeros in a ~100 KB .gz. Reading it whole took 3.2 GB for 1.5 GB of zeros.
    import time
    import tracemalloc
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gz_stream(path, _idx_header(1000, 28, 28), 96 << 20)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: holds more than the "
                                             r"784000 bytes .*\(1000, 28, 28\).*trailing data"):
            read_idx(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes for a file promising 784,000"
    assert seconds < 5


def test_a_header_promising_more_than_a_gz_can_hold_is_refused_before_reading(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(60000, 28, 28)))  # a few dozen bytes
    with pytest.raises(ValueError, match=r"x-idx3-ubyte\.gz: header says shape \(60000, 28, 28\) "
                                         r"\(47040000 bytes\), more than a \d+-byte gzip file"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", [(65536, 65536, 65536, 65536),  # 2**64: wraps to 0 in int64
                                   (2**32 - 1,) * 3])
def test_a_header_whose_size_overflows_int64_is_refused_by_name(tmp_path, compress, shape):
    path = tmp_path / ("huge-idx.gz" if compress else "huge-idx")
    data = _idx_header(*shape)
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=rf"huge-idx.*shape \({shape[0]}, .*overflows int64"):
        read_idx(path)


def test_a_header_beyond_max_bytes_is_refused_by_name(tmp_path):
    path = tmp_path / "big-idx1-ubyte"
    path.write_bytes(_idx_header(2**31))  # 2 GiB promised, nothing there
    with pytest.raises(ValueError, match=r"big-idx1-ubyte.*promises 2147483648 bytes.*max_bytes"):
        read_idx(path)
    write_idx(path, np.arange(100), compress=False)
    assert read_idx(path, max_bytes=100).tolist() == list(range(100))
    with pytest.raises(ValueError, match=r"promises 100 bytes, more than the 99 .*max_bytes"):
        read_idx(path, max_bytes=99)


@pytest.mark.parametrize("compress, says", [(False, r"header says shape \(3, 2\) \(6 bytes "
                                                     r"after its 12-byte header\) but holds 7"),
                                            (True, r"holds more than the 6 bytes")])
def test_trailing_data_after_the_promised_bytes_is_refused(tmp_path, compress, says):
    path = tmp_path / ("t-idx2-ubyte" + (".gz" if compress else ""))
    data = _idx_header(3, 2) + bytes(6) + b"\x07"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=rf"t-idx2-ubyte.*{says}"):
        read_idx(path)


def test_a_short_gz_body_is_named(tmp_path):
    path = tmp_path / "s-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(10) + bytes(4)))
    with pytest.raises(ValueError, match=r"s-idx1-ubyte\.gz: header says shape \(10,\) \(10 "
                                         r"bytes\) but holds 4 bytes"):
        read_idx(path)


def _raises_within(seconds, fn, *args):
    """Run fn(*args) in a thread; return the exception it raised, failing if it blocks."""
    import threading
    box = {}

    def target():
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 (handed to the test)
            box["err"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread, box.get("err")


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz"])
def test_a_fifo_in_the_mnist_folder_is_refused_without_blocking(tmp_path, name):
    make_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    fifo = tmp_path / name
    os.mkfifo(fifo)
    thread, err = _raises_within(10, load_mnist, tmp_path)
    if thread.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("load_mnist blocked on a FIFO")
    assert isinstance(err, ValueError), err
    assert re.search(rf"{re.escape(name)}: is a FIFO; an IDX file must be a regular file", str(err))


def test_a_directory_in_place_of_an_idx_file_is_named(tmp_path):
    make_mnist(tmp_path, compress=False)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte").mkdir()
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: is a directory"):
        load_mnist(tmp_path)

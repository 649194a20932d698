"""load_mnist(root, download=True) / download_mnist against a loopback server: no network."""
import hashlib
import os

import numpy as np
import pytest
import torch

from mnist_server import serve, sha256_table, small_mnist
from vaetut.data import (MNIST_CHECKSUMS, MNIST_MIRRORS, DownloadError, download_mnist,
                         load_mnist)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def no_temporaries(root):
    return [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_the_standard_table_names_the_four_files_with_torchvision_md5s():
    assert MNIST_CHECKSUMS["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert MNIST_CHECKSUMS["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert len(MNIST_CHECKSUMS) == 4 and all(m.startswith("https://") for m in MNIST_MIRRORS)


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_download_then_load_and_skip_what_is_there(tmp_path, algorithm):
    files, arrays = small_mnist()
    table = {n: hashlib.new(algorithm, d).hexdigest() for n, d in files.items()}
    root = tmp_path / "new" / "mnist"  # made if missing
    with serve(files) as (url, server):
        mnist = load_mnist(root, download=True, mirrors=[url], checksums=table, timeout=5)
        assert sorted(server.requests) == sorted("/mnist/" + n for n in files)
        expected = torch.tensor(arrays["train-images-idx3-ubyte"].reshape(6, -1) / 255.0,
                                dtype=torch.float32)
        torch.testing.assert_close(mnist.train, expected)
        assert mnist.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
        assert {p.name: p.read_bytes() for p in root.iterdir()} == files
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in root.iterdir())
        # everything is there with the right checksum: nothing is fetched again
        server.requests.clear()
        load_mnist(root, download=True, mirrors=[url], checksums=table, timeout=5)
        assert server.requests == []
        # a damaged copy is fetched again and replaced
        (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
        load_mnist(root, download=True, mirrors=[url], checksums=table, timeout=5)
        assert server.requests == ["/mnist/t10k-labels-idx1-ubyte.gz"]
        assert (root / "t10k-labels-idx1-ubyte.gz").read_bytes() == files["t10k-labels-idx1-ubyte.gz"]
    assert no_temporaries(root)


def test_a_wrong_checksum_is_refused_and_nothing_is_renamed(tmp_path):
    files, _ = small_mnist()
    table = sha256_table(files)
    table["train-labels-idx1-ubyte.gz"] = "0" * 64
    old = b"an old copy that fails its checksum"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(old)
    with serve(files) as (url, _):
        with pytest.raises(DownloadError, match=r"train-labels-idx1-ubyte\.gz.*wrong checksum"
                                                r".*expected 0{64}") as info:
            download_mnist(tmp_path, mirrors=[url], checksums=table, timeout=5)
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    assert (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes() == old  # verified before rename
    assert no_temporaries(tmp_path)


@pytest.mark.parametrize("how, says", [
    ("closed early", r"IncompleteRead|truncated"),  # the server announces more than it sends
    ("served short", r"wrong checksum"),  # a truncated file served with an honest length
])
def test_a_truncated_file_is_refused(tmp_path, how, says):
    files, _ = small_mnist()
    table = sha256_table(files)
    name = "train-images-idx3-ubyte.gz"
    good = files[name]
    files[name] = (good[:len(good) // 2], len(good)) if how == "closed early" else good[:len(good) // 2]
    with serve(files) as (url, _):
        with pytest.raises(DownloadError, match=rf"{name}.*({says})"):
            load_mnist(tmp_path, download=True, mirrors=[url], checksums=table, timeout=5)
    assert not (tmp_path / name).exists() and no_temporaries(tmp_path)


def test_the_next_mirror_is_tried_and_every_failure_is_reported(tmp_path):
    files, _ = small_mnist()
    table = sha256_table(files)
    bad = {n: b"not it" for n in files}
    with serve(bad, prefix="/bad/") as (bad_url, _), serve({}, prefix="/empty/") as (empty_url, _), \
            serve(files) as (good_url, good):
        paths = download_mnist(tmp_path / "a", mirrors=[empty_url, bad_url, good_url],
                               checksums=table, timeout=5)
        assert len(good.requests) == 4 and sorted(paths) == sorted(files)
        with pytest.raises(DownloadError, match=r"404.*/bad/.*wrong checksum") as info:
            download_mnist(tmp_path / "b", mirrors=[empty_url, bad_url], checksums=table,
                           timeout=5)
        assert empty_url in str(info.value) and bad_url in str(info.value)


def test_a_file_larger_than_max_bytes_is_refused(tmp_path):
    files, _ = small_mnist()
    with serve(files) as (url, _):
        with pytest.raises(DownloadError, match=r"max_bytes=100"):
            download_mnist(tmp_path, mirrors=url, checksums=sha256_table(files), timeout=5,
                           max_bytes=100)
    assert list(tmp_path.iterdir()) == []


def test_a_link_at_the_destination_is_never_written_through(tmp_path):
    files, _ = small_mnist()
    table = sha256_table(files)
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    name = "train-images-idx3-ubyte.gz"
    (root / name).symlink_to(outside)
    with serve(files) as (url, server):
        with pytest.raises(ValueError, match=rf"{name}.*symbolic link.*remove it"):
            download_mnist(root, mirrors=[url], checksums=table, timeout=5)
        assert outside.read_bytes() == b"keep me" and (root / name).is_symlink()
        (root / name).unlink()
        (root / name).symlink_to(tmp_path / "nothing")  # a dangling link: refused, not created
        with pytest.raises(ValueError, match=rf"{name}.*link to nothing"):
            download_mnist(root, mirrors=[url], checksums=table, timeout=5)
        assert not (tmp_path / "nothing").exists()
        # a link to the right file is read through and kept
        right = tmp_path / "right.gz"
        right.write_bytes(files[name])
        (root / name).unlink()
        (root / name).symlink_to(right)
        server.requests.clear()
        download_mnist(root, mirrors=[url], checksums=table, timeout=5)
        assert (root / name).is_symlink() and f"/mnist/{name}" not in server.requests
    assert no_temporaries(root)


def test_a_fifo_at_the_destination_is_refused_without_blocking(tmp_path):
    files, _ = small_mnist()
    os.mkfifo(tmp_path / "t10k-images-idx3-ubyte.gz")
    with serve(files) as (url, _):
        with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*FIFO"):
            download_mnist(tmp_path, mirrors=[url], checksums=sha256_table(files), timeout=5)


@pytest.mark.parametrize("kwargs, says", [
    ({"mirrors": ["ftp://example.org/mnist/"]}, r"mirrors.*http"),
    ({"mirrors": []}, r"mirrors must be a non-empty list"),
    ({"checksums": {"a.gz": "xyz"}}, r"checksums\['a.gz'\].*MD5.*SHA-256"),
    ({"checksums": {"../a.gz": "0" * 32}}, r"checksums.*plain file name"),
    ({"checksums": {}}, r"checksums must be a non-empty mapping"),
    ({"timeout": 0}, r"timeout must be a positive"),
])
def test_bad_download_arguments_are_named(tmp_path, kwargs, says):
    with pytest.raises(ValueError, match=says):
        download_mnist(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"root .* is not a folder"):
        download_mnist(tmp_path / "f", mirrors=["http://127.0.0.1:9/"], checksums={"a": "0" * 32})


def test_load_mnist_needs_the_four_files_in_the_table(tmp_path):
    files, _ = small_mnist()
    del files["t10k-labels-idx1-ubyte.gz"]
    with serve(files) as (url, _):
        with pytest.raises(ValueError, match=r"checksums must name t10k-labels-idx1-ubyte\.gz"):
            load_mnist(tmp_path, download=True, mirrors=[url], checksums=sha256_table(files),
                       timeout=5)

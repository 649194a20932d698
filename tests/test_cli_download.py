"""python -m vaetut train --data mnist --download, against a loopback server (no network)."""
import functools
import subprocess
import sys

import pytest

import vaetut.data
from mnist_server import serve, sha256_table, small_mnist
from vaetut.run.cli import main


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _point_load_mnist_at(monkeypatch, url, table):
    """The CLI passes download=True to load_mnist; here its mirrors and checksums are the
    test server's (the defaults name the public mirrors)."""
    monkeypatch.setattr(vaetut.data, "load_mnist",
                        functools.partial(vaetut.data.load_mnist, mirrors=[url],
                                          checksums=table, timeout=5))


def _args(root, out, *extra):
    return ["train", "--data", "mnist", "--mnist-root", str(root), "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--hidden", "8", "--z-dim", "2",
            "--no-progress", *extra]


def test_help_shows_the_download_flag():
    out = subprocess.run([sys.executable, "-m", "vaetut", "train", "--help"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "--download" in out


def test_download_fetches_the_files_then_trains(tmp_path, monkeypatch, capsys):
    files, _ = small_mnist(n_train=8, n_test=4)
    root = tmp_path / "mnist"
    with serve(files) as (url, server):
        _point_load_mnist_at(monkeypatch, url, sha256_table(files))
        assert main(_args(root, tmp_path / "run", "--download")) == 0
        assert sorted(server.requests) == sorted("/mnist/" + n for n in files)
        assert {p.name: p.read_bytes() for p in root.iterdir()} == files
        assert (tmp_path / "run" / "history.json").exists()
        server.requests.clear()  # without --download nothing is fetched
        assert main(_args(root, tmp_path / "run2")) == 0
        assert server.requests == []


def test_a_failed_download_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    files, _ = small_mnist()
    table = sha256_table(files)
    table["train-images-idx3-ubyte.gz"] = "0" * 64
    with serve(files) as (url, _):
        _point_load_mnist_at(monkeypatch, url, table)
        capsys.readouterr()
        assert main(_args(tmp_path / "mnist", tmp_path / "run", "--download")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download train-images-idx3-ubyte.gz" in err[0], err
    assert "wrong checksum" in err[0] and not (tmp_path / "run").exists()
    assert not (tmp_path / "mnist").exists()  # the folder the download made, removed again


def test_download_without_mnist_is_refused(tmp_path, capsys):
    assert main(["train", "--download", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "--download" in capsys.readouterr().err and not (tmp_path / "run").exists()

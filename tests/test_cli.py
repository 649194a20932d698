import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "vaetut", "--help"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "train" in out and "bench" in out
    out = subprocess.run([sys.executable, "-m", "vaetut", "train", "--help"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "--epochs" in out and "--mnist-root" in out and "(default: digits)" in out


def test_train_writes_checkpoint_history_and_picture(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--epochs", "2", "--out",
                             str(tmp_path), "--no-progress"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "history.json", "samples.png"}
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert json.loads(result.stdout.strip().splitlines()[-1])["epoch"] == 2
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_reports_a_missing_mnist_folder_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--data", "mnist",
                             "--mnist-root", str(tmp_path / "none"), "--epochs", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "MNIST IDX files" in result.stderr


def _train(*args):
    return subprocess.run([sys.executable, "-m", "vaetut", "train", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300)


def _one_line_error(result, *parts):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaetut train: error:"), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_resuming_with_other_settings_or_fewer_epochs_fails_in_one_line(tmp_path):
    assert _train("--epochs", "2", "--hidden", "16", "--out", str(tmp_path)).returncode == 0
    _one_line_error(_train("--epochs", "3", "--hidden", "16", "--lr", "1e-9",
                           "--out", str(tmp_path)), "cannot resume", "lr", "--no-resume")
    _one_line_error(_train("--epochs", "1", "--hidden", "16", "--out", str(tmp_path)),
                    "holds epoch 2", "epochs=1")


def test_out_naming_a_file_fails_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    _one_line_error(_train("--epochs", "1", "--out", str(tmp_path / "f")), "--out", "file")
    _one_line_error(_train("--epochs", "1", "--out", str(tmp_path / "f" / "sub")), "--out")


def _unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("x")  # root writes anyway
    except PermissionError:
        return folder
    for candidate in ("/proc", "/sys"):  # folders nobody can create files in
        try:
            open(os.path.join(candidate, "vaetut-probe"), "w").close()
        except OSError:
            return candidate
    pytest.skip("no folder that cannot be written to")


def test_an_unwritable_out_fails_before_training(tmp_path):
    folder = _unwritable_folder(tmp_path)
    start = time.time()
    result = _train("--epochs", "200", "--hidden", "256", "256", "--out", str(folder))
    _one_line_error(result, "--out", "cannot be written")
    assert time.time() - start < 60  # not after 200 epochs


def test_a_failed_start_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "new"
    _one_line_error(_train("--epochs", "1", "--lr", "0", "--out", str(out)), "lr")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["labels as images", "broken gz"])
def test_a_malformed_mnist_file_fails_in_one_line_naming_it(tmp_path, damage):
    from test_data import make_mnist, write_idx
    make_mnist(tmp_path, compress=True)
    if damage == "labels as images":
        write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((6, 28, 28)), compress=True)
    else:
        gz = tmp_path / "t10k-images-idx3-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:40])
    result = _train("--data", "mnist", "--mnist-root", str(tmp_path), "--epochs", "1",
                    "--out", str(tmp_path / "out"))
    _one_line_error(result, "-idx")
    assert not (tmp_path / "out").exists()


def test_a_diverged_run_prints_one_line_and_exits_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--epochs", "2", "--lr",
                             "1e6", "--out", str(tmp_path / "run"), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("vaetut train: training diverged: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

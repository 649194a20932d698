import json
import subprocess
import sys


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "vaetut", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "train" in out and "bench" in out
    out = subprocess.run([sys.executable, "-m", "vaetut", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--epochs" in out and "--mnist-root" in out and "(default: digits)" in out


def test_train_writes_checkpoint_history_and_picture(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--epochs", "2", "--out",
                             str(tmp_path), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "history.json", "samples.png"}
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert json.loads(result.stdout.strip().splitlines()[-1])["epoch"] == 2
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_reports_a_missing_mnist_folder_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--data", "mnist",
                             "--mnist-root", str(tmp_path / "none"), "--epochs", "1"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "MNIST IDX files" in result.stderr

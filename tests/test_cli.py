import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest


OUT_FILES = {"checkpoint.pt", "history.json", "samples.png", ".checkpoint.pt.lock"}


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "vaetut", "--help"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "train" in out and "bench" in out
    # says what the tool does and what its exit statuses mean
    assert "Train a variational autoencoder" in out and "130 interrupted" in out
    out = subprocess.run([sys.executable, "-m", "vaetut", "train", "--help"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert "--epochs" in out and "--mnist-root" in out and "(default: digits)" in out


def test_train_help_shows_the_default_of_every_option():
    from vaetut.run.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    for action in train._actions:
        if action.dest == "help":
            continue
        default = " ".join(str(action.default).split()) if not isinstance(action.default, list) \
            else str(action.default)
        assert f"(default: {default})" in text, action.option_strings


def test_train_writes_checkpoint_history_and_picture(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--epochs", "2", "--out",
                             str(tmp_path), "--no-progress"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == OUT_FILES
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert json.loads(result.stdout.strip().splitlines()[-1])["epoch"] == 2
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # where the files went, and, rerun, that the run is complete
    assert f"wrote {tmp_path / 'checkpoint.pt'}, {tmp_path / 'history.json'} and " in result.stdout
    again = _train("--epochs", "2", "--out", str(tmp_path))
    assert again.returncode == 0 and "already complete" in again.stdout
    more = _train("--epochs", "3", "--out", str(tmp_path))
    assert more.returncode == 0 and "from epoch 2; trained epochs 3 to 3" in more.stdout


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
                           "--out", str(tmp_path)), "cannot resume", "--lr: 0.003", "--no-resume")
    _one_line_error(_train("--epochs", "3", "--hidden", "32", "--out", str(tmp_path)),
                    "cannot resume", "--hidden: [16] in the checkpoint, [32] now")
    result = _train("--epochs", "1", "--hidden", "16", "--out", str(tmp_path))
    _one_line_error(result, "holds epoch 2", "--epochs 1", "--epochs 2")
    assert "epochs=" not in result.stderr and "resume=False" not in result.stderr


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


# ----- issue 21 ---------------------------------------------------------------------------
def test_1_a_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path):
    first = subprocess.Popen([sys.executable, "-m", "vaetut", "train", "--no-progress",
                              "--epochs", "400", "--out", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        second = _train("--epochs", "8", "--lr", "1e-3", "--out", str(tmp_path))
        _one_line_error(second, "being written by another run", f"pid {first.pid} ")
    finally:
        first.kill()
        first.wait(timeout=60)


def test_3_links_planted_in_out_are_replaced_not_written_through(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in ("history.json", "samples.png"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("precious")
        (out / name).symlink_to(victims[name])
    result = _train("--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name, victim in victims.items():
        assert victim.read_text() == "precious"
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0


def test_3_a_link_planted_at_the_checkpoint_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").symlink_to(tmp_path / "elsewhere.pt")
    _one_line_error(_train("--epochs", "1", "--out", str(out)), "symbolic link")
    assert not (tmp_path / "elsewhere.pt").exists()


def _limit_file_size():
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))


def test_14_a_write_that_fails_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaetut", "train", "--no-progress",
                             "--epochs", "1", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=_limit_file_size)
    _one_line_error(result, "cannot write", "checkpoint.pt", "File too large")


def test_14_15_a_folder_as_checkpoint_fails_before_training(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    start = time.time()
    _one_line_error(_train("--epochs", "300", "--no-resume", "--out", str(tmp_path)),
                    "is a folder")
    assert time.time() - start < 60


def test_18_ctrl_c_says_which_epoch_the_checkpoint_holds_and_exits_130(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "vaetut", "train", "--no-progress",
                             "--epochs", "400", "--out", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaetut train: interrupted; "), stderr
    assert "checkpoint.pt holds epoch " in lines[0]


@pytest.mark.parametrize("args, says", [
    (["--seed", "99999999999999999999"], "argument --seed: must be an int in [0, 2**63 - 1)"),
    (["--lr", "nan"], "argument --lr: must be a positive finite number"),
    (["--epochs", "0"], "argument --epochs: must be a positive int"),
    (["--hidden", "16", "-3"], "argument --hidden: must be a positive int"),
])
def test_20_bad_flags_are_one_line_naming_the_flag(tmp_path, args, says):
    result = _train(*args, "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaetut train: error: " + says), result.stderr
    assert not (tmp_path / "o").exists()


def test_21_a_failed_run_removes_every_folder_it_created(tmp_path):
    out = tmp_path / "n1" / "n2" / "n3"
    _one_line_error(_train("--epochs", "1", "--device", "bogus", "--out", str(out)), "device")
    assert list(tmp_path.iterdir()) == []


def test_gaussian_on_binarized_pixels_is_warned_about(tmp_path):
    result = _train("--epochs", "1", "--likelihood", "gaussian", "--hidden", "16",
                    "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "warning: --likelihood gaussian on binarized pixels (--binarize fixed)" in result.stderr
    quiet = _train("--epochs", "1", "--likelihood", "gaussian", "--binarize", "none",
                   "--hidden", "16", "--out", str(tmp_path / "grey"))
    assert quiet.returncode == 0 and "warning" not in quiet.stderr

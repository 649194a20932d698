"""Issue 31, robustness round three: the attacks on writing, locking, archives, data files and
the command line. Each test is named after the item it covers."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vaetut
from vaetut.run import checkpoint as checkpoint_module

real_open = os.open


def _plant_link_at_temporaries(monkeypatch, victim, names=None):
    """Make os.open, right after it creates a writer's temporary (.NAME.*.tmp, O_CREAT), swap
    a symbolic link to `victim` in at that name: the race a process that can write in the
    folder runs against the writer, made deterministic."""
    planted = []

    def racing_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        name = os.path.basename(os.fspath(path))
        if flags & os.O_CREAT and name.endswith(".tmp") and (
                names is None or any(name.startswith(f".{n}.") for n in names)):
            os.remove(path)
            os.symlink(victim, path)
            planted.append(name)
        return fd

    monkeypatch.setattr(os, "open", racing_open)
    return planted


# ----- 1. a write goes through the descriptor it created, never a link swapped in ----------
def test_1_a_link_swapped_in_at_the_temporary_receives_no_checkpoint_bytes(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = _plant_link_at_temporaries(monkeypatch, victim)
    with pytest.raises(OSError, match=r"ck\.pt.*replaced while it was written"):
        vaetut.save_checkpoint(tmp_path / "ck.pt", vaetut.VAE(10, 3))
    monkeypatch.undo()
    assert planted and victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ck.pt.lock", "victim"]


def test_1_the_cli_writes_history_and_picture_through_their_descriptors(tmp_path, monkeypatch):
    from vaetut.run.cli import main

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "run"
    planted = _plant_link_at_temporaries(monkeypatch, victim, ("history.json", "samples.png"))
    code = main(["train", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--no-progress",
                 "--out", str(out)])
    monkeypatch.undo()
    assert planted == [n for n in planted if n.startswith(".history.json.")] and code == 2
    assert victim.read_bytes() == b"precious" and not (out / "history.json").exists()
    planted = _plant_link_at_temporaries(monkeypatch, victim, ("samples.png",))
    assert main(["train", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--no-progress",
                 "--out", str(out)]) == 2
    monkeypatch.undo()
    assert planted and victim.read_bytes() == b"precious" and not (out / "samples.png").exists()


def test_1_save_checkpoint_to_a_folder_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (".", str(tmp_path)):
        with pytest.raises(IsADirectoryError, match="is a folder; name a file"):
            vaetut.save_checkpoint(path, vaetut.VAE(10, 3))


# ----- 2. the lock file: never written through a hard link, a FIFO or a device ------------
def test_2_a_hard_link_planted_at_the_lock_file_is_refused_not_truncated(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.link(victim, tmp_path / ".ck.pt.lock")
    with pytest.raises(ValueError, match=r"\.ck\.pt\.lock.*hard link.*remove it"):
        vaetut.save_checkpoint(tmp_path / "ck.pt", vaetut.VAE(10, 3))
    assert victim.read_text() == "precious" and not (tmp_path / "ck.pt").exists()


def test_2_a_fifo_as_the_lock_file_is_named(tmp_path):
    os.mkfifo(tmp_path / ".ck.pt.lock")
    with pytest.raises(ValueError, match=r"\.ck\.pt\.lock.*FIFO"):
        with checkpoint_module.writer_lock(tmp_path / "ck.pt"):
            pass


# ----- 3. every writer of a checkpoint takes its lock --------------------------------------
HOLDER = """
import sys, time
from vaetut.run.checkpoint import writer_lock
with writer_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_3_save_checkpoint_refuses_a_checkpoint_another_process_writes(tmp_path):
    path = tmp_path / "ck.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3), epoch=1)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(checkpoint_module.CheckpointLockedError, match=f"pid {proc.pid}"):
            vaetut.save_checkpoint(path, vaetut.VAE(10, 3), epoch=2)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert path.read_bytes() == before
    with checkpoint_module.writer_lock(path):  # re-entrant: fit holds it around its saves
        vaetut.save_checkpoint(path, vaetut.VAE(10, 3), epoch=3)
    assert vaetut.load_checkpoint(path)[1]["epoch"] == 3


# ----- 4. a crafted file costs its size, not what it claims --------------------------------
def test_4_a_huge_sparse_file_is_refused_from_its_last_bytes(tmp_path, monkeypatch):
    path = tmp_path / "sparse.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3))
    with open(path, "r+b") as f:
        f.truncate(3 << 30)  # 3 GB that the disk does not hold: zeros after the archive
    reads = []
    real_read = os.read

    def counting_read(fd, n):
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(ValueError, match=r"sparse\.pt.*does not end with a zip archive"):
        vaetut.load_checkpoint(path)
    assert sum(reads) < 1 << 20, f"read {sum(reads)} bytes of a file that is not an archive"
    # end records claiming a huge directory are refused before it is read, too
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"PK\x05\x06" + bytes(8) + (2**31).to_bytes(4, "little") + bytes(6))
    reads.clear()
    with pytest.raises(ValueError, match=r"sparse\.pt.*zip directory claims"):
        vaetut.load_checkpoint(path)
    assert sum(reads) < 1 << 20


def test_14_bytes_before_the_archive_are_named_as_such(tmp_path):
    path = tmp_path / "ck.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3))
    path.write_bytes(bytes(8) + path.read_bytes())
    with pytest.raises(ValueError, match=r"ck\.pt.*8 bytes before its end records.*added"):
        vaetut.load_checkpoint(path)


# ----- 5. the archive's directory entries are checked, not only their contents ------------
def _patch_entry(path, name, offset, size, change):
    """Change one field (at `offset` in the central-directory entry of record `name`)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02" + bytes(0), data.rindex(b"PK\x05\x06") - 4096)
    while True:
        n, e, c = (int.from_bytes(data[at + k:at + k + 2], "little") for k in (28, 30, 32))
        if data[at + 46:at + 46 + n].decode() == name:
            break
        at += 46 + n + e + c
        assert data[at:at + 4] == b"PK\x01\x02", name
    field = int.from_bytes(data[at + offset:at + offset + size], "little")
    data[at + offset:at + offset + size] = change(field).to_bytes(size, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset, size, change, says", [
    (38, 4, lambda v: v | 0x10, "flagged as a folder"),      # the DOS directory attribute
    (38, 4, lambda v: v | 0o644 << 16, "attributes"),
    (8, 2, lambda v: v | 0x1, "flags 0x809"),                 # 'encrypted'
    (20, 4, lambda v: v - 1, "claims"),                       # stored size != size
    (42, 4, lambda v: v + 1, "local header"),                 # offset of the local header
])
def test_5_a_changed_directory_entry_of_any_weight_record_is_refused(tmp_path, offset, size,
                                                                      change, says):
    path = tmp_path / "ck.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3))
    good = path.read_bytes()
    import zipfile
    names = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
    for name in names:
        path.write_bytes(good)
        _patch_entry(path, name, offset, size, change)
        with pytest.raises(ValueError, match=rf"ck\.pt.*{name}.*{says}"):
            vaetut.load_checkpoint(path)


# ----- 9 and 14. errors that name what is wrong --------------------------------------------
def test_9_a_small_file_claiming_a_huge_width_names_the_config_key(tmp_path):
    small = vaetut.VAE(10, 3, (4,))
    path = tmp_path / "wide.pt"
    for key, value in (("x_dim", 2**62), ("z_dim", 2**40), ("hidden", [2**62])):
        torch.save({"format_version": 1, "config": {**small.config, key: value},
                    "model": small.state_dict()}, path)
        with pytest.raises(ValueError, match=rf"wide\.pt.*'s {key}(\[0\])? is.*cannot hold"):
            vaetut.load_checkpoint(path)


def test_14_map_location_cpu_1_is_named(tmp_path):
    path = tmp_path / "ck.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3))
    with pytest.raises(ValueError, match=r"map_location='cpu:1': there is one CPU device"):
        vaetut.load_checkpoint(path, map_location="cpu:1")


# ----- 4 and 13. the download: one deadline, every mirror, arguments named ----------------
@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_4_the_timeout_bounds_a_dripping_download_as_a_whole(tmp_path, no_proxy):
    import time

    from mnist_server import Drip, serve, sha256_table
    files = {"a.gz": b"x" * 40}
    with serve({"a.gz": Drip(files["a.gz"], 0.1)}) as (url, _):
        start = time.monotonic()
        with pytest.raises(vaetut.data.DownloadError, match=r"a\.gz.*within timeout=1"):
            vaetut.data.download_mnist(tmp_path, mirrors=[url], checksums=sha256_table(files),
                                       timeout=1)
        assert time.monotonic() - start < 2.5  # a byte every 0.1 s: 4 s if each read were timed
    assert list(tmp_path.iterdir()) == []


def test_13_a_redirect_to_a_malformed_url_tries_the_next_mirror(tmp_path, no_proxy):
    from mnist_server import Redirect, serve, sha256_table
    files = {"a.gz": b"the file"}
    with serve({"a.gz": Redirect("http://[::1")}, prefix="/bad/") as (bad, _), \
            serve(files) as (good, _):
        paths = vaetut.data.download_mnist(tmp_path, mirrors=[bad, good],
                                           checksums=sha256_table(files), timeout=5)
    assert open(paths["a.gz"], "rb").read() == b"the file"


@pytest.mark.parametrize("kwargs, says", [
    ({"timeout": float("inf")}, "timeout must be a positive, finite number"),
    ({"timeout": True}, "timeout must be"),
    ({"max_bytes": "1000"}, "max_bytes must be a positive int"),
    ({"max_bytes": 0}, "max_bytes must be a positive int"),
])
def test_13_download_arguments_are_named(tmp_path, kwargs, says):
    with pytest.raises(ValueError, match=says):
        vaetut.data.download_mnist(tmp_path, checksums={"a.gz": "0" * 32}, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_14_a_killed_downloads_temporary_is_swept_and_only_ascii_pids_count(tmp_path, no_proxy):
    from mnist_server import serve, sha256_table
    dead = 2**22 + 12345  # above the usual pid_max: not a live process
    stale = tmp_path / f".a.gz.{dead}.0a1b2c3d.tmp"
    stale.write_bytes(b"half a download")
    arabic_pid = str(dead).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    arabic = [tmp_path / f".{name}.{arabic_pid}.0a1b2c3d.tmp" for name in ("a.gz", "ck.pt")]
    for path in arabic:
        path.write_bytes(b"not a name the writer makes: the writer's pids are ASCII")
    files = {"a.gz": b"the file"}
    with serve(files) as (url, _):
        vaetut.data.download_mnist(tmp_path, mirrors=[url], checksums=sha256_table(files),
                                   timeout=5)
    vaetut.save_checkpoint(tmp_path / "ck.pt", vaetut.VAE(10, 3))
    assert not stale.exists() and all(path.exists() for path in arabic)


# ----- 8, 13 and 14. data files that are not what MNIST's are -----------------------------
def _mnist_folder(root, **changes):
    from mnist_server import small_mnist
    _, arrays = small_mnist()
    arrays.update(changes)
    root.mkdir(exist_ok=True)
    from mnist_server import idx_gz
    for stem, array in arrays.items():
        (root / f"{stem}.gz").write_bytes(idx_gz(array))
    return root


@pytest.mark.parametrize("stem, array, says", [
    ("train-labels-idx1-ubyte", [0, 1, 2, 10, 4, 5], r"labels are digits 0\.\.9.*0\.\.10"),
    ("t10k-labels-idx1-ubyte", [255, 1, 2, 3], r"labels are digits 0\.\.9.*1\.\.255"),
    ("train-images-idx3-ubyte", np.zeros((6, 0, 0)), "images are 0x0 pixels"),
    ("t10k-images-idx3-ubyte", np.zeros((4, 28, 0)), "images are 28x0 pixels"),
])
def test_8_13_mnist_files_of_no_digit_or_no_pixel_are_named(tmp_path, stem, array, says):
    root = _mnist_folder(tmp_path / "m", **{stem: np.asarray(array)})
    with pytest.raises(ValueError, match=rf"{stem}\.gz: .*{says}"):
        vaetut.data.load_mnist(root)


def test_14_an_idx_header_of_65_dimensions_names_the_file(tmp_path):
    import struct
    path = tmp_path / "deep-idx"
    path.write_bytes(struct.pack(">HBB", 0, 8, 65) + struct.pack(">65I", *[1] * 65) + b"\0")
    with pytest.raises(ValueError, match=r"deep-idx: the IDX header's shape has 65 dimensions"):
        vaetut.data.read_idx(path)


@pytest.mark.parametrize("load", ["load_digits", "load_mnist_subset"])
def test_13_a_test_fraction_given_as_text_is_named(load):
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got '0\.2'"):
        getattr(vaetut.data, load)(test_fraction="0.2")


# ----- 9, 14 and issue 29's item 7: the command line ---------------------------------------
SMALL = ["--epochs", "1", "--hidden", "8", "--z-dim", "2", "--no-progress"]


def _cli(capsys, *args):
    from vaetut.run.cli import main
    capsys.readouterr()
    try:
        code = main(["train", *args])
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.mark.parametrize("args, says", [
    (["--z-dim", str(2**63)], "--z-dim: must be a positive int below 2**63"),
    (["--batch-size", str(2**70)], "--batch-size: must be a positive int below 2**63"),
    (["--hidden", "8", str(2**64)], "--hidden: must be a positive int below 2**63"),
    (["--hidden", str(10**12)], "--z-dim 8 and --hidden 1000000000000 ask for a model of"),
    (["--z-dim", str(2**62), "--hidden", str(2**62)], "ask for a model of more than 2**63"),
])
def test_9_huge_sizes_are_one_line_naming_the_flag(tmp_path, capsys, args, says):
    code, _, err = _cli(capsys, "--epochs", "1", "--out", str(tmp_path / "run"), *args)
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "run").exists()


def test_9_a_rank_that_never_starts_is_one_line(tmp_path, capsys, monkeypatch):
    def never_met(*args, **kwargs):
        raise torch.distributed.DistStoreError("Timed out after 121 seconds waiting for "
                                               "clients. 1/2 clients joined.\n(more lines)")

    monkeypatch.setattr(vaetut, "fit", never_met)
    code, _, err = _cli(capsys, *SMALL, "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1, err
    assert "torchrun processes could not all meet (Timed out after 121 seconds" in err[0]


def test_14_ctrl_c_while_torch_imports_is_one_line_and_130(tmp_path):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "vaetut", "train", *SMALL, "--out",
                             str(tmp_path / "run")], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # importing torch takes seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err


def test_14_out_through_dot_dot_makes_only_the_folder_it_names(tmp_path, capsys):
    code, _, err = _cli(capsys, *SMALL, "--out", f"{tmp_path}/a/b/../c")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["c"]
    assert (tmp_path / "a" / "c" / "checkpoint.pt").exists()


def test_29_a_rerun_that_trains_nothing_does_not_say_it_wrote_the_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert _cli(capsys, *SMALL, "--out", out)[0] == 0
    before = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    code, said, _ = _cli(capsys, *SMALL, "--out", out)
    assert code == 0 and "already complete" in said and "nothing was trained" in said
    assert "wrote" not in said and "history.json and" in said
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == before


def test_29_the_mnist_subset_is_a_data_source(tmp_path, capsys):
    code, said, err = _cli(capsys, "--data", "mnist-subset", *SMALL, "--out", str(tmp_path))
    assert code == 0, err
    model, _ = vaetut.load_checkpoint(tmp_path / "checkpoint.pt")
    assert model.config["x_dim"] == 28 * 28


def test_29_each_default_that_differs_from_fits_says_why():
    import inspect

    from vaetut.run.cli import build_parser
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    fit_defaults = inspect.signature(vaetut.fit).parameters
    for flag, name in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr")):
        action = next(a for a in train._actions if flag in a.option_strings)
        fits = fit_defaults[name].default
        assert action.default == fits or f"fit's default is {fits}" in action.help, flag


def test_4_a_resumed_cli_run_reads_the_checkpoint_once(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert _cli(capsys, *SMALL, "--out", out)[0] == 0
    reads = []
    real_read_file = checkpoint_module._read_file
    monkeypatch.setattr(checkpoint_module, "_read_file",
                        lambda path: reads.append(path) or real_read_file(path))
    code, said, err = _cli(capsys, *SMALL[2:], "--epochs", "2", "--out", out)
    assert code == 0 and "from epoch 1; trained epochs 2 to 2" in said, err
    assert len(reads) == 1, reads


def test_14_a_second_ctrl_c_while_the_first_is_reported_changes_nothing(tmp_path, capsys,
                                                                        monkeypatch):
    import signal

    from vaetut.run import cli

    def interrupted(args):
        args.checkpoint = str(tmp_path / "ck.pt")
        raise KeyboardInterrupt

    def note_hit_by_a_second_ctrl_c(checkpoint):
        os.kill(os.getpid(), signal.SIGINT)
        return "nothing was written"

    monkeypatch.setattr(cli, "train", interrupted)
    monkeypatch.setattr(cli, "_interrupted_note", note_hit_by_a_second_ctrl_c)
    code, _, err = _cli(capsys, "--out", str(tmp_path))
    assert code == 130 and err == ["vaetut train: interrupted; nothing was written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_14_a_device_node_as_the_lock_file_is_named(tmp_path):
    import stat
    try:  # /dev/null's numbers; making a device node needs privileges
        os.mknod(tmp_path / ".ck.pt.lock", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot make a device node here")
    with pytest.raises(ValueError, match=r"\.ck\.pt\.lock.*a character device.*remove it"):
        vaetut.save_checkpoint(tmp_path / "ck.pt", vaetut.VAE(10, 3))

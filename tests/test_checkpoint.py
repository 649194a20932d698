"""Checkpoints: never written unreadable, read back as saved, refused with a clear message
when corrupt or foreign, and no temporaries left behind by killed saves."""
import os
import pathlib
import stat

import numpy as np
import pytest
import torch

import vaetut


@pytest.mark.parametrize("state, where", [
    (dict(folder=pathlib.Path("runs")), r"state\['folder'\] is a pathlib\.PosixPath"),
    (dict(extra={"arr": np.zeros(3)}), r"state\['extra'\]\['arr'\] is a numpy\.ndarray"),
    (dict(scores=[1.0, np.float64(2.0)]), r"state\['scores'\]\[1\] is a numpy\.float64"),
    (dict(seen={frozenset([1])}), r"state\['seen'\]\[.*\] is a frozenset"),
])
def test_save_refuses_what_load_could_not_read_back(tmp_path, state, where):
    model = vaetut.VAE(10, 3)
    with pytest.raises(ValueError, match=where):
        vaetut.save_checkpoint(tmp_path / "m.pt", model, **state)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_state_that_would_replace_the_model(tmp_path):
    with pytest.raises(ValueError, match="config"):
        vaetut.save_checkpoint(tmp_path / "m.pt", vaetut.VAE(10, 3), config={"x_dim": 3})
    with pytest.raises(ValueError, match="model must be a vaetut.VAE"):
        vaetut.save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))


def test_everything_save_accepts_loads_back(tmp_path):
    state = dict(a=None, b=True, c=3, d=2.5, e="x", f=b"y", g=(1, [2, {"h": torch.ones(2)}]),
                 i=torch.Size([2, 3]), j=torch.float64, k=torch.device("cpu"), n=float("nan"))
    vaetut.save_checkpoint(tmp_path / "m.pt", vaetut.VAE(10, 3), **state)
    _, payload = vaetut.load_checkpoint(tmp_path / "m.pt")
    assert payload["g"][1][1]["h"].tolist() == [1.0, 1.0] and payload["j"] is torch.float64
    assert payload["i"] == torch.Size([2, 3]) and payload["e"] == "x"


def test_a_float64_model_comes_back_as_float64(tmp_path):
    model = vaetut.VAE(10, 3).double()
    vaetut.save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = vaetut.load_checkpoint(tmp_path / "m.pt")
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_stale_temporaries_of_the_same_checkpoint_are_removed(tmp_path):
    model = vaetut.VAE(10, 3)
    # what a save killed mid-write leaves: a temporary of a process that no longer runs
    dead = 2**22 + 12345  # above the usual pid_max, so not a live process
    stale = tmp_path / f".m.pt.{dead}.0a1b2c3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / f".other.pt.{dead}.0a1b2c3d.tmp"  # another checkpoint's: kept
    other.write_bytes(b"x")
    live = tmp_path / f".m.pt.{os.getpid()}.0a1b2c3d.tmp"  # a save in progress: kept
    live.write_bytes(b"x")
    vaetut.save_checkpoint(tmp_path / "m.pt", model)
    assert not stale.exists() and other.exists() and live.exists()


def test_checkpoints_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        vaetut.save_checkpoint(tmp_path / "m.pt", vaetut.VAE(10, 3))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o644


def _corrupt(tmp_path, kind):
    path = tmp_path / "c.pt"
    model = vaetut.VAE(10, 3)
    vaetut.save_checkpoint(path, model, epoch=1)
    good = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif kind == "text":
        path.write_text("hello world")
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind == "no config":
        torch.save({"format_version": 1, "model": model.state_dict()}, path)
    elif kind == "bad config":
        torch.save({"format_version": 1, "config": {"x_dim": 10}, "model": {}}, path)
    elif kind == "no weights":
        torch.save({"format_version": 1, "config": model.config}, path)
    elif kind == "other weights":
        torch.save({"format_version": 1, "config": model.config,
                    "model": vaetut.VAE(10, 4).state_dict()}, path)
    elif kind == "state dict only":
        torch.save(model.state_dict(), path)
    elif kind == "pickled object":
        torch.save({"format_version": 1, "x": pathlib.Path("a")}, path)
    return path


@pytest.mark.parametrize("kind, says", [
    ("empty", "empty"), ("truncated", "not a readable checkpoint"),
    ("text", "not a readable checkpoint"), ("list", "holds a list"),
    ("no config", "lacks 'config'"), ("bad config", "config"), ("no weights", "lacks 'model'"),
    ("other weights", "weights do not fit"), ("state dict only", "unknown checkpoint format"),
    ("pickled object", "other than tensors and plain data"),
])
def test_corrupt_or_foreign_checkpoints_are_named(tmp_path, kind, says):
    path = _corrupt(tmp_path, kind)
    with pytest.raises(ValueError, match="c.pt") as info:
        vaetut.load_checkpoint(path)
    assert says in str(info.value)


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is a directory; a checkpoint must be a regular file"):
        vaetut.load_checkpoint(tmp_path)

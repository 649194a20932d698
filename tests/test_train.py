import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import vaetut
from helpers import run, small_model
from vaetut import NonFiniteLossError


def test_a_few_epochs_raise_the_test_elbo_clearly(digits):
    model, history = run(digits, epochs=8)
    assert len(history) == 8 and history["epoch"] == list(range(1, 9))
    first, last = history.records[0], history.records[-1]
    assert last["test_elbo"] > first["test_elbo"] + 3
    # the record's terms are consistent with each other and with a fresh evaluation
    for split in ("train", "test"):
        assert abs(last[f"{split}_elbo"] - (last[f"{split}_log_px_given_z"]
                                            - last[f"{split}_kl_to_prior"])) < 1e-4
    assert vaetut.evaluate(model, digits.test, seed=1)["elbo"] == pytest.approx(last["test_elbo"])


def test_the_same_seed_gives_an_identical_history(digits):
    (m1, h1), (m2, h2) = run(digits, epochs=3), run(digits, epochs=3)
    assert h1.records == h2.records
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    model = small_model()
    other = vaetut.fit(model, digits.train, digits.test, epochs=3, batch_size=64, lr=3e-3,
                       device="cpu", seed=1, progress=False)
    assert other.records != h1.records


def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(digits, tmp_path):
    path = tmp_path / "ck.pt"
    whole_model, whole = run(digits, epochs=5)
    run(digits, epochs=2, checkpoint=path)
    resumed_model, resumed = run(digits, epochs=5, checkpoint=path)
    assert resumed.records == whole.records
    for p1, p2 in zip(whole_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p1, p2)
    _, payload = vaetut.load_checkpoint(path)
    assert payload["epoch"] == 5


def test_stochastic_binarization_resamples_the_training_pixels(digits):
    grey = vaetut.data.load_digits(binarize="stochastic")
    seen = []
    model = small_model()
    original = vaetut.objective.elbo

    def spy(model, x, *args, **kwargs):
        seen.append(x.clone())
        return original(model, x, *args, **kwargs)

    vaetut.fit(model, grey.train, epochs=2, batch_size=2000, device="cpu", progress=False,
               stochastic_binarization=True, objective=spy)
    assert all(set(x.unique().tolist()) == {0.0, 1.0} for x in seen)
    assert len(seen) == 2  # one batch of all images per epoch; each epoch a new draw
    assert not torch.equal(seen[0].sum(0), seen[1].sum(0))


def test_a_nan_loss_stops_fit_naming_epoch_and_step(digits, tmp_path):
    model = small_model()
    vaetut.fit(model, digits.train, epochs=1, batch_size=64, device="cpu", progress=False,
               checkpoint=tmp_path / "ck.pt")
    calls = {"n": 0}

    def poisoned(model, x, *args, **kwargs):
        calls["n"] += 1
        terms = vaetut.elbo(model, x, *args, **kwargs)
        if calls["n"] == 3:
            return terms._replace(elbo=terms.elbo * float("nan"))
        return terms

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 3 of 23"):
        vaetut.fit(model, digits.train, epochs=3, batch_size=64, device="cpu", progress=False,
                   checkpoint=tmp_path / "ck.pt", objective=poisoned)
    # the checkpoint of the last good epoch is intact, and the weights were not touched by the NaN
    _, payload = vaetut.load_checkpoint(tmp_path / "ck.pt")
    assert payload["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_nan_weights_stop_fit_at_the_first_step(digits):
    model = small_model()
    with torch.no_grad():
        model.decoder.net[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        vaetut.fit(model, digits.train, epochs=1, device="cpu", progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(epochs=0), "epochs"), (dict(batch_size=-1), "batch_size"), (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(n_samples=0), "n_samples"), (dict(device="gpu9"), "device"),
])
def test_bad_fit_arguments_name_themselves(digits, kwargs, name):
    with pytest.raises(ValueError, match=name):
        vaetut.fit(small_model(), digits.train, **{"progress": False, **kwargs})


def test_bad_data_names_the_split(digits):
    with pytest.raises(ValueError, match="train must have shape"):
        vaetut.fit(small_model(), digits.train[:, :10], progress=False)
    with pytest.raises(ValueError, match=r"test must lie in \[0, 1\]"):
        vaetut.fit(small_model(), digits.train, digits.test * 3, progress=False)


def test_resuming_a_different_model_is_refused(digits, tmp_path):
    run(digits, epochs=1, checkpoint=tmp_path / "ck.pt")
    with pytest.raises(ValueError, match="holds a model"):
        vaetut.fit(vaetut.VAE(64, 3), digits.train, epochs=2, checkpoint=tmp_path / "ck.pt",
                   progress=False)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = vaetut.VAE(10, 3, hidden=(8, 6), likelihood="gaussian")
    vaetut.save_checkpoint(tmp_path / "m.pt", model, epoch=7)
    loaded, payload = vaetut.load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == 7 and loaded.config == model.config
    x, z = torch.randn(4, 10), torch.randn(4, 3)
    for a, b in zip(model.encoder(x), loaded.encoder(x)):
        assert torch.equal(a, b)
    assert torch.equal(model.decoder(z), loaded.decoder(z))
    assert [f.name for f in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = vaetut.VAE(10, 3)
    vaetut.save_checkpoint(tmp_path / "m.pt", model, epoch=1)
    original = torch.save

    def broken(obj, f):
        original(obj, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        vaetut.save_checkpoint(tmp_path / "m.pt", model, epoch=2)
    monkeypatch.undo()
    assert vaetut.load_checkpoint(tmp_path / "m.pt")[1]["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["m.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        vaetut.load_checkpoint(tmp_path / "missing.pt")


def _train_cmd(out, epochs):
    return [sys.executable, "-m", "vaetut", "train", "--epochs", str(epochs), "--hidden", "256",
            "256", "--out", str(out), "--no-progress"]


def _final_weights(out):
    model, payload = vaetut.load_checkpoint(out / "checkpoint.pt")
    return model.state_dict(), payload


@pytest.mark.slow
def test_a_killed_training_run_resumes_to_the_same_model(tmp_path):
    epochs = 12
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, epochs), env=env)
    checkpoint, deadline = killed / "checkpoint.pt", time.time() + 120
    epoch_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            epoch_at_kill = vaetut.load_checkpoint(checkpoint)[1]["epoch"]
            if epoch_at_kill >= 2:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= epoch_at_kill < epochs
    subprocess.run(_train_cmd(killed, epochs), env=env, check=True)  # resumes
    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(whole, epochs), env=env, check=True)
    (w_killed, p_killed), (w_whole, p_whole) = _final_weights(killed), _final_weights(whole)
    assert p_killed["epoch"] == p_whole["epoch"] == epochs
    assert p_killed["history"] == p_whole["history"]
    for name in w_whole:
        assert torch.equal(w_killed[name], w_whole[name]), name
    history = json.loads((killed / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))

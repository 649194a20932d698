import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import vaetut
from helpers import run, small_model
from vaetut import NonFiniteLossError
from vaetut.objective import iwae_objective


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
    calls = {"n": 0}

    def poisoned(model, x, *args, **kwargs):
        calls["n"] += 1
        terms = vaetut.elbo(model, x, *args, **kwargs)
        if calls["n"] == 23 + 3:  # epoch 2, step 3
            return terms._replace(elbo=terms.elbo * float("nan"))
        return terms

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 3 of 23") as info:
        vaetut.fit(model, digits.train, epochs=3, batch_size=64, device="cpu", progress=False,
                   checkpoint=tmp_path / "ck.pt", objective=poisoned)
    assert "ck.pt') holds epoch 1" in str(info.value)
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
    # no temporary file left behind (the writer's lock file stays: see checkpoint_lock)
    assert sorted(f.name for f in tmp_path.iterdir()) == [".m.pt.lock", "m.pt"]


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
    assert sorted(f.name for f in tmp_path.iterdir()) == [".m.pt.lock", "m.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        vaetut.load_checkpoint(tmp_path / "missing.pt")


def _cli_args(out, epochs):
    return ["train", "--epochs", str(epochs), "--hidden", "32", "--out", str(out),
            "--no-progress"]


def _python(script):
    """A Python process running `script` with one thread (the same arithmetic in each)."""
    return subprocess.run([sys.executable, "-c", script], timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _final_weights(out):
    model, payload = vaetut.load_checkpoint(out / "checkpoint.pt")
    return model.state_dict(), payload


@pytest.mark.slow
def test_a_killed_training_run_resumes_to_the_same_model(tmp_path):
    epochs, killed_in = 5, 3
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # the command line's run kills itself (SIGKILL) once epoch 3 has trained, before its
    # save: killed mid-training, deterministically, with epoch 2's checkpoint on disk
    died = _python(f"""
import os, signal, sys
import vaetut.run.train as train
from vaetut.run.cli import main
save = train.save_checkpoint
def save_or_die(*args, **kwargs):
    if kwargs["epoch"] == {killed_in}:
        os.kill(os.getpid(), signal.SIGKILL)
    save(*args, **kwargs)
train.save_checkpoint = save_or_die
sys.exit(main({_cli_args(killed, epochs)!r}))
""")
    assert died.returncode == -signal.SIGKILL, "the run was not killed"
    assert vaetut.load_checkpoint(killed / "checkpoint.pt")[1]["epoch"] == killed_in - 1
    # the same command again resumes it; an uninterrupted run is the reference
    done = _python(f"""
from vaetut.run.cli import main
assert main({_cli_args(killed, epochs)!r}) == 0 and main({_cli_args(whole, epochs)!r}) == 0
""")
    assert done.returncode == 0
    (w_killed, p_killed), (w_whole, p_whole) = _final_weights(killed), _final_weights(whole)
    assert p_killed["epoch"] == p_whole["epoch"] == epochs
    assert p_killed["history"] == p_whole["history"]
    for name in w_whole:
        assert torch.equal(w_killed[name], w_whole[name]), name
    history = json.loads((killed / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))


# --- training that never lies: issue 14 ---------------------------------------------------

def test_a_step_that_ruins_the_model_fails_the_epoch_before_anything_is_saved(digits, tmp_path):
    # one step per epoch: the loss checked before it is finite, the step itself ruins the model
    torch.manual_seed(0)
    model = vaetut.VAE(64, 8, (32,))
    seen = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 1: test_elbo is nan") as info:
        vaetut.fit(model, digits.train[:400], digits.test[:100], epochs=1, batch_size=400,
                   lr=10.0, device="cpu", progress=False, checkpoint=tmp_path / "c.pt",
                   on_epoch_end=lambda *args: seen.append(args))
    assert seen == [] and not (tmp_path / "c.pt").exists()
    assert "holds epoch" not in str(info.value) and "nothing was written" in str(info.value)


def test_non_finite_weights_fail_the_epoch_even_without_a_test_set(digits, tmp_path):
    calls = {"n": 0}

    def sabotage(model, x, *args, **kwargs):  # finite loss, then the weights become inf
        calls["n"] += 1
        terms = vaetut.elbo(model, x, *args, **kwargs)
        if calls["n"] == 23 + 23:  # the last step of epoch 2
            with torch.no_grad():
                model.decoder.net[0].bias[0] = float("inf")
        return terms

    with pytest.raises(NonFiniteLossError, match=r"epoch 2: .*decoder\.net\.0\.bias") as info:
        run_model = small_model()
        vaetut.fit(run_model, digits.train, epochs=3, batch_size=64, device="cpu",
                   progress=False, checkpoint=tmp_path / "ck.pt", objective=sabotage)
    assert "ck.pt') holds epoch 1" in str(info.value)
    assert vaetut.load_checkpoint(tmp_path / "ck.pt")[1]["epoch"] == 1


def test_a_nan_in_the_first_epoch_does_not_claim_a_checkpoint_exists(digits, tmp_path):
    model = small_model()
    with torch.no_grad():
        model.decoder.net[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1") as info:
        vaetut.fit(model, digits.train, epochs=1, device="cpu", progress=False,
                   checkpoint=tmp_path / "ck.pt")
    assert "holds epoch" not in str(info.value)
    assert "nothing was written to" in str(info.value)


def _fit_args(digits, **changes):
    args = dict(train=digits.train, test=digits.test, epochs=2, batch_size=64, lr=3e-3,
                device="cpu", seed=0, n_samples=1, progress=False)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, named", [
    (dict(lr=1e-9), "lr"), (dict(seed=1), "seed"), (dict(batch_size=32), "batch_size"),
    (dict(n_samples=2), "n_samples"), (dict(stochastic_binarization=True), "stochastic_binarization"),
    (dict(objective=iwae_objective), "objective"),
    ("train", "train data"), ("test", "test data"),
])
def test_resuming_with_a_different_run_definition_is_refused(digits, tmp_path, changes, named):
    path = tmp_path / "a.pt"
    first = _fit_args(digits)
    vaetut.fit(small_model(), checkpoint=path, **first)
    if changes == "train":
        changes = dict(train=1 - digits.train)
    elif changes == "test":
        changes = dict(test=digits.test[:100])
    args = {**_fit_args(digits, **changes), "epochs": 3}
    with pytest.raises(ValueError, match=rf"cannot resume .*a\.pt.*{named}") as info:
        vaetut.fit(small_model(), checkpoint=path, **args)
    assert "resume=False" in str(info.value)
    assert vaetut.load_checkpoint(path)[1]["epoch"] == 2  # untouched


def test_asking_for_fewer_epochs_than_the_checkpoint_holds_is_refused(digits, tmp_path):
    path = tmp_path / "a.pt"
    vaetut.fit(small_model(), checkpoint=path, **_fit_args(digits, epochs=3))
    with pytest.raises(ValueError, match=r"holds epoch 3.*epochs=2"):
        vaetut.fit(small_model(), checkpoint=path, **_fit_args(digits, epochs=2))
    # as many epochs as it holds: nothing to train, the stored run comes back
    model = small_model()
    history = vaetut.fit(model, checkpoint=path, **_fit_args(digits, epochs=3))
    stored, payload = vaetut.load_checkpoint(path)
    assert history.records == payload["history"] and len(history) == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), stored.parameters()))


def test_resuming_needs_the_training_state_and_the_run_definition(digits, tmp_path):
    model_only = tmp_path / "model.pt"
    vaetut.save_checkpoint(model_only, small_model())
    with pytest.raises(ValueError, match=r"model\.pt.*no training state.*optimizer"):
        vaetut.fit(small_model(), checkpoint=model_only, **_fit_args(digits))
    old = tmp_path / "old.pt"  # written by a version that did not record the run
    vaetut.fit(small_model(), checkpoint=old, **_fit_args(digits, epochs=1))
    model, payload = vaetut.load_checkpoint(old)
    del payload["run"]
    vaetut.save_checkpoint(old, model, **{k: v for k, v in payload.items()
                                          if k not in ("format_version", "config", "model")})
    with pytest.raises(ValueError, match=r"old\.pt.*does not record .*resume=False"):
        vaetut.fit(small_model(), checkpoint=old, **_fit_args(digits))


def test_resuming_into_a_model_of_another_dtype_is_refused(digits, tmp_path):
    path = tmp_path / "a.pt"
    vaetut.fit(small_model(), checkpoint=path, **_fit_args(digits, epochs=1))
    with pytest.raises(ValueError, match="float64"):
        vaetut.fit(small_model().double(), checkpoint=path,
                   **_fit_args(digits, train=digits.train.double(), test=digits.test.double()))


@pytest.mark.parametrize("x, kwargs, match", [
    (lambda d: d.test * 5, {}, r"x must lie in \[0, 1\]"),
    (lambda d: d.test, dict(n_samples=0), "n_samples must be a positive int"),
    (lambda d: d.test[:0], {}, "x is empty"),
    (lambda d: d.test * float("nan"), {}, "x contains NaN"),
    (lambda d: d.test, dict(batch_size=0), "batch_size must be a positive int"),
    (lambda d: d.test, dict(batch_size=2.5), "batch_size must be a positive int"),
    (lambda d: d.test[:, :10], {}, r"x must have shape \(batch, 64\)"),
    (lambda d: d.test.double(), {}, r"float64.*float32.*\.float\(\)"),
    (lambda d: d.test, dict(seed=None), "seed must be an int"),
])
def test_evaluate_checks_its_inputs(digits, x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vaetut.evaluate(small_model(), x(digits), **kwargs)


def test_float64_data_are_refused_with_the_fix(digits):
    with pytest.raises(ValueError, match=r"train has dtype torch\.float64.*train\.float\(\)"):
        vaetut.fit(small_model(), digits.train.double(), epochs=1, progress=False)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_empty_data_are_refused(likelihood):
    model = vaetut.VAE(64, 4, (16,), likelihood)
    with pytest.raises(ValueError, match=r"train is empty"):
        vaetut.fit(model, torch.rand(0, 64), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"test is empty"):
        vaetut.fit(model, torch.rand(8, 64), torch.rand(0, 64), epochs=1, progress=False)


@pytest.mark.parametrize("seed", [None, 1.5, True, "0", -1])
def test_a_bad_seed_names_itself(digits, seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        vaetut.fit(small_model(), digits.train, epochs=1, seed=seed, progress=False)


def test_history_json_writes_null_for_non_finite_values(tmp_path):
    history = vaetut.History([{"epoch": 1, "test_elbo": float("nan"), "train_elbo": -float("inf")},
                              {"epoch": 2, "test_elbo": -50.0, "train_elbo": -49.5}])
    history.to_json(tmp_path / "h.json")

    def refuse(token):
        raise AssertionError(f"not JSON: {token}")

    records = json.loads((tmp_path / "h.json").read_text(), parse_constant=refuse)
    assert records[0] == {"epoch": 1, "test_elbo": None, "train_elbo": None}
    assert records[1] == history.records[1]

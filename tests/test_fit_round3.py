"""fit and resume, robustness round three (issue 31 items 6-8 and 10-13, issue 29 item 8):
the progress of every stateful object fit is given is saved or its resume refused; a
checkpoint's object state never changes the run's parameters; the same annealing object
continues its run; options, callbacks and data are checked before training; a record is
checked when it is made; a damaged resumed file is blamed on the file; the progress bar
shows the epoch it counts."""
import functools
import io
import re

import numpy as np
import pytest
import torch
from helpers import small_model
from tqdm.std import tqdm

import vaetut

try:  # the objectives' home (issue 28 moves them from diagnostics to objective)
    from vaetut.objective import BetaELBO, KLAnnealing
except ImportError:
    from vaetut.objective import BetaELBO, KLAnnealing

train_module = __import__("vaetut.run.train", fromlist=["fit"])


def fit(digits, epochs, **kwargs):
    model = small_model()
    kwargs = {"batch_size": 64, "lr": 3e-3, "device": "cpu", "seed": 0, "progress": False,
              **kwargs}
    return model, vaetut.fit(model, digits.train, digits.test, epochs=epochs, **kwargs)


# ----- item 6: schedules that keep their progress outside any saved state ------------------
class CountingSchedule:
    """A callable object: beta = calls / 4, counted in the object, with no state_dict."""

    def __init__(self, objective):
        self.objective, self.calls = objective, 0

    def __call__(self, epoch, model, record):
        self.calls += 1
        self.objective.beta = min(1.0, self.calls / 4)


class SlotCounter:
    __slots__ = ("calls",)

    def __init__(self):
        self.calls = 0


def count_in(counter, objective, epoch, model, record):
    record["beta"] = objective.beta
    counter.calls += 1
    objective.beta = min(1.0, counter.calls / 4)


class SavedCounter(SlotCounter):
    """The same counter, keeping its progress in state_dict()."""
    __slots__ = ()

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def _schedules():
    objective = BetaELBO(beta=0.0)
    return {"callable object": (objective, CountingSchedule(objective)),
            "partial of a __slots__ object": (
                objective, functools.partial(count_in, SlotCounter(), objective))}


@pytest.mark.parametrize("kind", ["callable object", "partial of a __slots__ object"])
def test_6_a_schedule_whose_progress_is_not_saved_is_not_resumed(digits, tmp_path, kind):
    objective, schedule = _schedules()[kind]
    fit(digits, 2, checkpoint=tmp_path / "ck.pt", objective=objective, on_epoch_end=schedule)
    objective, schedule = _schedules()[kind]
    with pytest.raises(ValueError, match=r"changed .*on_epoch_end.*calls.*state_dict"):
        fit(digits, 4, checkpoint=tmp_path / "ck.pt", objective=objective,
            on_epoch_end=schedule)


def test_6_a_schedule_with_a_state_dict_resumes_like_the_uninterrupted_run(digits, tmp_path):
    def annealed(epochs, path):  # beta counted by a __slots__ object reached through a partial
        objective = KLAnnealing(warmup_epochs=4)  # whose beta is saved progress
        schedule = functools.partial(count_in, SavedCounter(), objective)
        return fit(digits, epochs, checkpoint=path, objective=objective, on_epoch_end=schedule)

    _, whole = annealed(4, tmp_path / "whole.pt")
    annealed(2, tmp_path / "ck.pt")
    _, resumed = annealed(4, tmp_path / "ck.pt")
    assert whole["beta"] == [0.0, 0.25, 0.5, 0.75]
    assert resumed.records == whole.records


# ----- item 7: the checkpoint's object state cannot change the objective's parameters ----
def _forge_object_state(path, objective_state):
    model, payload = vaetut.load_checkpoint(path)
    del payload["format_version"], payload["config"], payload["model"]
    payload["object_state"] = {
        "objective": {"values": objective_state, "objects": {}},  # the format before
        "objects": {"objective": objective_state}, "unsaved": []}
    vaetut.save_checkpoint(path, model, **payload)


def test_7_a_beta_elbo_resumes_with_its_own_parameters(digits, tmp_path):
    fit(digits, 1, checkpoint=tmp_path / "ck.pt", objective=BetaELBO(beta=1.0))
    _forge_object_state(tmp_path / "ck.pt", {"beta": 4.0, "free_bits": 3.0})
    objective = BetaELBO(beta=1.0)
    try:
        fit(digits, 2, checkpoint=tmp_path / "ck.pt", objective=objective)
    except ValueError as err:  # refusing the file is as good as ignoring it
        assert "ck.pt" in str(err)
    assert (objective.beta, objective.free_bits) == (1.0, 0.0)


def test_7_an_annealing_state_that_changes_free_bits_is_refused(digits, tmp_path):
    annealing = KLAnnealing(warmup_epochs=4)
    fit(digits, 1, checkpoint=tmp_path / "ck.pt", objective=annealing,
        on_epoch_end=annealing.on_epoch_end)
    _forge_object_state(tmp_path / "ck.pt", {"beta": 0.25, "betas": [0.0], "free_bits": 3.0})
    again = KLAnnealing(warmup_epochs=4)
    with pytest.raises(ValueError, match="ck.pt"):
        fit(digits, 2, checkpoint=tmp_path / "ck.pt", objective=again,
            on_epoch_end=again.on_epoch_end)
    assert again.free_bits == 0.0


# ----- item 12: the same annealing object continues its own run ---------------------------
def test_12_the_same_annealing_object_continues_its_run(digits, tmp_path):
    whole = KLAnnealing(warmup_epochs=4)
    _, uninterrupted = fit(digits, 4, objective=whole, on_epoch_end=whole.on_epoch_end)
    annealing = KLAnnealing(warmup_epochs=4)
    fit(digits, 2, checkpoint=tmp_path / "ck.pt", objective=annealing,
        on_epoch_end=annealing.on_epoch_end)
    _, continued = fit(digits, 4, checkpoint=tmp_path / "ck.pt", objective=annealing,
                       on_epoch_end=annealing.on_epoch_end)
    assert annealing.betas == whole.betas == [0.0, 0.25, 0.5, 0.75]
    assert continued.records == uninterrupted.records


# ----- items 8, 10, 13: checked before training ------------------------------------------
def _never_called(*args, **kwargs):
    raise AssertionError("training started")


@pytest.mark.parametrize("kwargs, named", [
    (dict(resume="False"), "resume"), (dict(resume=1), "resume"),
    (dict(objective="elbo"), "objective"),
    (dict(on_epoch_end=3), "on_epoch_end"),
    (dict(on_epoch_end=lambda epoch: None), "on_epoch_end"),
    (dict(batch_size=2**70), "batch_size"), (dict(n_samples=2**64), "n_samples"),
    (dict(seed=2**64), "seed"), (dict(seed=1.5), "seed"),
])
def test_8_10_13_bad_options_are_named_before_training(digits, tmp_path, kwargs, named):
    objective = kwargs.pop("objective", _never_called)
    with pytest.raises(ValueError, match=named):
        vaetut.fit(small_model(), digits.train, epochs=1, device="cpu", progress=False,
                   checkpoint=tmp_path / "ck.pt", objective=objective, **kwargs)
    assert not (tmp_path / "ck.pt").exists()


def test_13_a_model_and_data_fit_cannot_use_are_named(digits):
    with torch.device("meta"):
        meta = vaetut.VAE(64, 4, hidden=(32,))
    for model, x, says in [(None, digits.train, "model must be a vaetut.VAE"),
                           (meta, digits.train, "model.*meta device"),
                           (small_model(), digits.train.to_sparse(), "train.*sparse")]:
        with pytest.raises(ValueError, match=says):
            vaetut.fit(model, x, epochs=1, device="cpu", progress=False)


@pytest.mark.parametrize("where", ["weights", "adam"])
def test_13_non_finite_numbers_in_a_resumed_file_are_blamed_on_the_file(digits, tmp_path,
                                                                        where):
    fit(digits, 1, checkpoint=tmp_path / "ck.pt")
    model, payload = vaetut.load_checkpoint(tmp_path / "ck.pt")
    del payload["format_version"], payload["config"], payload["model"]
    if where == "weights":
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
    else:
        payload["optimizer"]["state"][0]["exp_avg_sq"][0, 0] = float("inf")
    vaetut.save_checkpoint(tmp_path / "ck.pt", model, **payload)
    with pytest.raises(ValueError, match=r"ck\.pt.*(NaN or infinite)") as info:
        fit(digits, 2, checkpoint=tmp_path / "ck.pt")
    assert "lr=" not in str(info.value)


# ----- item 11: a record is checked when it is made -----------------------------------------
@pytest.mark.parametrize("key, value", [("score", float("inf")), ("test_bpd", None),
                                        ("score", np.array([1.0, 2.0]))])
def test_11_a_value_a_resume_would_refuse_is_refused_when_recorded(digits, tmp_path, key,
                                                                   value):
    def put(epoch, model, record):
        record[key] = value

    with pytest.raises(ValueError, match=rf"on_epoch_end.*{key}"):
        fit(digits, 1, checkpoint=tmp_path / "ck.pt", on_epoch_end=put)
    assert not (tmp_path / "ck.pt").exists()


def test_11_one_element_arrays_are_recorded_as_numbers_and_resume(digits, tmp_path):
    def put(epoch, model, record):
        record["score"], record["count"] = torch.tensor(2.5), np.array([3])

    _, history = fit(digits, 1, checkpoint=tmp_path / "ck.pt", on_epoch_end=put)
    assert (history["score"], history["count"]) == ([2.5], [3])
    _, resumed = fit(digits, 2, checkpoint=tmp_path / "ck.pt", on_epoch_end=put)
    assert len(resumed) == 2


# ----- issue 29 item 8: the bar shows the epoch it counts, with that epoch's numbers -------
def test_the_progress_bar_shows_the_numbers_of_the_epoch_it_counts(digits, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(train_module, "tqdm",
                        functools.partial(tqdm, file=out, mininterval=0, miniters=1))
    _, history = fit(digits, 3, progress=True)
    shown = [m.groups() for line in re.split(r"[\r\n]", out.getvalue())
             if (m := re.search(r"(\d)/3 .*test_elbo=(-?[\d.]+)", line))]
    assert {int(k) for k, _ in shown} == {1, 2, 3}
    for k, value in shown:
        assert value == f"{history['test_elbo'][int(k) - 1]:.2f}"

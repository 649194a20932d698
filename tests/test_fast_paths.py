"""fit's fast paths (fused_adam, check_every, compile) give the plain loop's results, and
the default step on the CPU is the fused Adam kernel."""
import pytest
import torch

import vaetut
from helpers import run, small_model
from vaetut import NonFiniteLossError

# Steps of fit on the digits with batch 64: ceil(1437 / 64) = 23 per epoch.
STEPS = 23


def max_param_diff(m1, m2):
    return max((a - b).abs().max().item() for a, b in zip(m1.parameters(), m2.parameters()))


def max_record_diff(h1, h2):
    assert [r.keys() for r in h1.records] == [r.keys() for r in h2.records]
    return max(abs(r1[k] - r2[k]) for r1, r2 in zip(h1.records, h2.records) for k in r1)


@pytest.fixture(scope="module")
def plain(digits):
    return run(digits, fused_adam=False)  # the per-parameter Adam loop


@pytest.fixture
def fused_args(monkeypatch):
    """The `fused` argument of every torch.optim.Adam built while the test runs."""
    seen = []
    original = torch.optim.Adam.__init__

    def spy(self, params, *args, **kwargs):
        seen.append(kwargs.get("fused"))
        original(self, params, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", spy)
    return seen


def test_the_default_on_the_cpu_is_the_fused_adam_kernel(digits, fused_args):
    seen = fused_args
    run(digits, epochs=1)
    run(digits, epochs=1, fused_adam=False)
    assert seen == [True, None]  # None: torch's own choice, the for-loop on the CPU


@pytest.mark.parametrize("check_every", [5, STEPS, 1000])
def test_check_every_is_bit_identical_to_the_per_step_check(digits, plain, check_every):
    model, history = run(digits, check_every=check_every, fused_adam=False)
    assert history.records == plain[1].records
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain[0].parameters()))


def test_check_every_checks_once_per_n_steps_and_at_the_epoch_end(digits, monkeypatch):
    calls = []
    original = vaetut.run.steps.raise_first_bad_loss

    def spy(losses, start, stop, *args):
        calls.append((start, stop))
        return original(losses, start, stop, *args)

    monkeypatch.setattr(vaetut.run.steps, "raise_first_bad_loss", spy)
    run(digits, epochs=1, check_every=5)
    assert calls == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]


def test_fused_adam_is_used_and_equals_the_plain_loop(digits, plain, fused_args):
    seen = fused_args
    model, history = run(digits, fused_adam=True)
    assert seen == [True]
    # a different kernel, so equal up to float32 rounding: 69 Adam steps, weights ~0.1 to 1
    assert max_param_diff(model, plain[0]) < 1e-5
    assert max_record_diff(history, plain[1]) < 1e-4  # nats per example, values ~ -30
    # and not trivially: training moved the weights by far more than the tolerance
    assert max_param_diff(model, small_model()) > 1e-2


def test_fused_adam_with_a_larger_check_interval_resumes_like_an_uninterrupted_run(digits,
                                                                                 tmp_path):
    fast = dict(fused_adam=True, check_every=10)
    whole_model, whole = run(digits, epochs=4, **fast)
    run(digits, epochs=2, checkpoint=tmp_path / "ck.pt", **fast)
    resumed_model, resumed = run(digits, epochs=4, checkpoint=tmp_path / "ck.pt", **fast)
    assert resumed.records == whole.records
    assert all(torch.equal(a, b) for a, b in zip(whole_model.parameters(),
                                                 resumed_model.parameters()))


def test_a_plain_checkpoint_resumed_with_fused_adam_stays_close(digits, plain, tmp_path):
    run(digits, epochs=1, checkpoint=tmp_path / "ck.pt", fused_adam=False)
    model, history = run(digits, epochs=3, checkpoint=tmp_path / "ck.pt", fused_adam=True)
    assert history.records[0] == plain[1].records[0]  # epoch 1 came from the checkpoint
    assert max_param_diff(model, plain[0]) < 1e-5
    assert max_record_diff(history, plain[1]) < 1e-4


def poisoned_at(call_number):
    calls = {"n": 0}

    def objective(model, x, *args, **kwargs):
        calls["n"] += 1
        terms = vaetut.elbo(model, x, *args, **kwargs)
        if calls["n"] == call_number:
            return terms._replace(elbo=terms.elbo * float("nan"))
        return terms

    return objective


@pytest.mark.parametrize("check_every, bad_call, message", [
    # epoch 2, step 3: found by the check after step 10 of that epoch
    (10, STEPS + 3, r"loss is nan at epoch 2, step 3 of 23 .*check after step 10 "
                    r"\(check_every=10\), so steps 3 to 10"),
    # a check interval longer than the epoch: found at the epoch's end
    (1000, STEPS + 3, r"loss is nan at epoch 2, step 3 of 23 .*check after step 23"),
    # the last step of an epoch, after the last full interval
    (10, 2 * STEPS, r"loss is nan at epoch 2, step 23 of 23 .*check after step 23"),
])
def test_check_every_names_the_first_bad_step_before_the_epoch_is_reported(
        digits, tmp_path, check_every, bad_call, message):
    epochs_seen = []
    model = small_model()
    with pytest.raises(NonFiniteLossError, match=message) as info:
        vaetut.fit(model, digits.train, digits.test, epochs=3, batch_size=64, device="cpu",
                   progress=False, checkpoint=tmp_path / "ck.pt", check_every=check_every,
                   objective=poisoned_at(bad_call),
                   on_epoch_end=lambda epoch, m, record: epochs_seen.append(epoch))
    assert "ck.pt') holds epoch 1" in str(info.value)
    assert epochs_seen == [1]  # epoch 2 was neither reported nor checkpointed
    _, payload = vaetut.load_checkpoint(tmp_path / "ck.pt")
    assert payload["epoch"] == 1 and len(payload["history"]) == 1


@pytest.mark.parametrize("kwargs, name", [
    (dict(check_every=0), "check_every"), (dict(check_every=2.0), "check_every"),
    (dict(fused_adam="yes"), "fused_adam"), (dict(compile="fastest"), "compile"),
])
def test_bad_fast_path_arguments_name_themselves(digits, kwargs, name):
    with pytest.raises(ValueError, match=name):
        vaetut.fit(small_model(), digits.train, epochs=1, device="cpu", progress=False, **kwargs)


@pytest.mark.slow
def test_compiled_objective_is_used_and_equals_the_plain_loop(digits, monkeypatch):
    """torch.compile on the CPU, kept to one compilation (the cost: every batch has one
    shape, so dynamic=False compiles once) and one epoch of 10 steps."""
    x = digits.train[:640]  # 10 batches of 64, no smaller last batch to compile again

    def one_epoch(**kwargs):
        model = small_model()
        return model, vaetut.fit(model, x, digits.test, epochs=1, batch_size=64, lr=3e-3,
                                 device="cpu", seed=0, progress=False, **kwargs)

    plain = one_epoch(fused_adam=False)
    seen = []
    original = torch.compile

    def spy(fn, **kwargs):
        seen.append(kwargs)
        return original(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    model, history = one_epoch(compile=True, fused_adam=True, check_every=10)
    assert seen == [{"dynamic": False, "mode": None}]
    assert max_param_diff(model, plain[0]) < 1e-5
    assert max_record_diff(history, plain[1]) < 1e-4

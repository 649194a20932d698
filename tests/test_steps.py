"""vaetut/steps.py: the graph path's step computes what the plain loop computes.

On the CPU the graph step's body runs eagerly (GraphedSteps(capture=False)): the same
arithmetic, checked against EagerSteps. The tests marked `cuda` capture real CUDA graphs;
they are skipped without a GPU and run where one is visible.
"""
import pytest
import torch

import vaetut
from vaetut import objective as objectives
from vaetut.run.steps import EagerSteps, GraphedSteps, NonFiniteLossError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _setup(digits, n=300, seed=0, device="cpu"):
    torch.manual_seed(seed)
    model = vaetut.VAE(64, 4, hidden=(32,)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator(device=device).manual_seed(seed)
    return model, optimizer, gen, digits.train[:n].to(device)


@pytest.mark.parametrize("n, batch_size, n_samples", [(300, 64, 1), (256, 64, 2), (50, 64, 1)])
def test_the_graph_step_body_equals_the_plain_loop(digits, n, batch_size, n_samples):
    # 300 = 4 x 64 + 44: a last, smaller batch; 256: none; 50: one batch smaller than B
    plain_model, plain_opt, plain_gen, x = _setup(digits, n)
    plain = EagerSteps(plain_model, vaetut.elbo, plain_opt, n, batch_size, n_samples, plain_gen)
    body_model, body_opt, body_gen, _ = _setup(digits, n)
    body = GraphedSteps(body_model, vaetut.elbo, body_opt, x.clone(), batch_size, n_samples,
                        body_gen, capture=False)
    assert body.sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    for epoch in (1, 2, 3):
        assert torch.equal(plain.run_epoch(x, epoch), body.run_epoch(x, epoch))
    for a, b in zip(plain_model.parameters(), body_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(plain_gen.get_state(), body_gen.get_state())  # the same draws, in order
    # and training did happen
    assert not torch.equal(next(plain_model.parameters()), next(_setup(digits, n)[0].parameters()))


def test_the_graph_step_reads_new_data_from_its_fixed_address(digits):
    # stochastic binarization: each epoch's draw is copied into the captured buffer
    model, opt, gen, x = _setup(digits)
    static = x.clone()
    steps = GraphedSteps(model, vaetut.elbo, opt, static, 64, 1, gen, capture=False)
    other = torch.bernoulli(torch.full_like(x, 0.5), generator=torch.Generator().manual_seed(3))
    steps.run_epoch(other, 1)
    assert torch.equal(static, other)


def test_the_graph_path_names_the_first_bad_step_at_the_end_of_the_epoch(digits):
    calls = {"n": 0}

    def poisoned(model, x, *args, **kwargs):
        calls["n"] += 1
        terms = vaetut.elbo(model, x, *args, **kwargs)
        return terms._replace(elbo=terms.elbo * float("nan")) if calls["n"] == 3 else terms

    model, opt, gen, x = _setup(digits)
    steps = GraphedSteps(model, poisoned, opt, x, 64, 1, gen, capture=False)
    with pytest.raises(NonFiniteLossError,
                       match=r"loss is nan at epoch 1, step 3 of 5 .*end of the epoch "
                             r"\(cuda_graph\), so steps 3 to 5 have changed the weights.*usable; note"):
        steps.run_epoch(x, 1, "; note")


def test_capture_needs_cuda(digits):
    model, opt, gen, x = _setup(digits)
    with pytest.raises(ValueError, match="CUDA graph needs the data on a CUDA device"):
        GraphedSteps(model, vaetut.elbo, opt, x, 64, 1, gen)


@pytest.mark.parametrize("kwargs, message", [
    (dict(cuda_graph="yes"), r"cuda_graph must be True, False or 'auto', got 'yes'"),
    (dict(cuda_graph=1), r"cuda_graph must be True, False or 'auto'"),
    (dict(cuda_graph=True, device="cpu"), r"cuda_graph=True needs a CUDA device, but fit runs on cpu"),
])
def test_bad_cuda_graph_arguments_name_themselves(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        vaetut.fit(vaetut.VAE(64, 2), digits.train, epochs=1, progress=False,
                   **{"device": "cpu", **kwargs})


def test_auto_runs_the_plain_loop_off_cuda(digits, monkeypatch):
    built = []
    monkeypatch.setattr(vaetut.run.train, "GraphedSteps", lambda *a, **k: built.append(a))
    vaetut.fit(vaetut.VAE(64, 2), digits.train[:100], epochs=1, device="cpu", progress=False)
    assert built == []


# ---------------------------------------------------------------- on a GPU

def _fit_cuda(digits, **kwargs):
    torch.manual_seed(0)
    model = vaetut.VAE(64, 4, hidden=(32,))
    args = dict(epochs=3, batch_size=64, lr=3e-3, device="cuda", seed=0, progress=False)
    history = vaetut.fit(model, digits.train, digits.test, **{**args, **kwargs})
    return model, history


@cuda
def test_graph_runs_are_reproducible_and_follow_the_plain_loop(digits):
    a_model, a = _fit_cuda(digits, cuda_graph=True)
    b_model, b = _fit_cuda(digits, cuda_graph=True)
    assert a.records == b.records  # same seed, same run, bit for bit
    plain_model, plain = _fit_cuda(digits, cuda_graph=False)
    # the same draws from the same generator; Adam's capturable arithmetic may round apart
    for x, y in zip(a_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    for r, s in zip(a.records, plain.records):
        assert r["test_elbo"] == pytest.approx(s["test_elbo"], abs=1e-3)


@cuda
def test_graph_runs_resume_exactly(digits, tmp_path):
    whole_model, whole = _fit_cuda(digits, cuda_graph=True, epochs=4)
    _fit_cuda(digits, cuda_graph=True, epochs=2, checkpoint=tmp_path / "ck.pt")
    resumed_model, resumed = _fit_cuda(digits, cuda_graph=True, epochs=4,
                                       checkpoint=tmp_path / "ck.pt")
    assert resumed.records == whole.records
    assert all(torch.equal(a, b) for a, b in zip(whole_model.parameters(),
                                                 resumed_model.parameters()))


@cuda
def test_auto_captures_on_cuda_and_the_warmup_leaves_no_trace(digits, monkeypatch):
    built = []
    original = vaetut.run.train.GraphedSteps

    def spy(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(vaetut.run.train, "GraphedSteps", spy)
    auto_model, auto = _fit_cuda(digits, epochs=1)
    assert len(built) == 1
    true_model, explicit = _fit_cuda(digits, epochs=1, cuda_graph=True)
    assert auto.records == explicit.records
    # no warm-up step reached the weights: one epoch of graphs = one epoch of the plain loop
    plain_model, plain = _fit_cuda(digits, epochs=1, cuda_graph=False)
    assert auto.records[0]["train_elbo"] == pytest.approx(plain.records[0]["train_elbo"], abs=1e-3)


@cuda
@pytest.mark.parametrize("objective", [objectives.iwae_objective, objectives.elbo_z_detached,
                                       objectives.elbo_without_kl])
def test_the_chapters_objectives_run_on_the_graph_path(digits, objective):
    _, graphed = _fit_cuda(digits, cuda_graph=True, epochs=2, objective=objective, n_samples=2)
    _, plain = _fit_cuda(digits, cuda_graph=False, epochs=2, objective=objective, n_samples=2)
    assert graphed["test_elbo"] == pytest.approx(plain["test_elbo"], abs=1e-2)


@cuda
def test_stochastic_binarization_and_a_callback_on_the_graph_path(digits):
    seen = []
    grey = vaetut.data.load_digits(binarize="stochastic")
    torch.manual_seed(0)
    model = vaetut.VAE(64, 4, hidden=(32,))
    history = vaetut.fit(model, grey.train, grey.test, epochs=2, batch_size=100, device="cuda",
                         progress=False, stochastic_binarization=True, cuda_graph=True,
                         on_epoch_end=lambda epoch, m, record: seen.append(epoch))
    assert seen == [1, 2] and history["train_elbo"][1] > history["train_elbo"][0]


@cuda
def test_a_nan_on_the_graph_path_names_its_step(digits):
    model = vaetut.VAE(64, 4, hidden=(32,))
    with torch.no_grad():
        model.decoder.net[0].bias[0] = float("nan")  # every loss is NaN from the first step
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step 1 of 23 .*"
                                                 r"end of the epoch \(cuda_graph\)"):
        vaetut.fit(model, digits.train, epochs=1, batch_size=64, device="cuda", progress=False,
                   cuda_graph=True)

"""The objective against independent references: torch.distributions and Monte Carlo."""
import math

import pytest
import torch
from torch import distributions as D

import vaetut
from vaetut.distributions import kl_to_prior, log_px_given_z, reparameterize


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_and_dtypes(likelihood):
    model = vaetut.VAE(12, 3, hidden=(16, 8), likelihood=likelihood)
    x = torch.rand(5, 12)
    q_mean, q_log_var = model.encoder(x)
    assert q_mean.shape == q_log_var.shape == (5, 3)
    assert model.decoder(torch.zeros(7, 5, 3)).shape == (7, 5, 12)
    terms = vaetut.elbo(model, x, n_samples=4)
    for t in terms:
        assert t.shape == (5,) and t.dtype == torch.float32
    torch.testing.assert_close(terms.elbo, terms.log_px_given_z - terms.kl_to_prior)
    assert vaetut.iwae_bound(model, x, k=6).shape == (5,)


def test_kl_to_prior_matches_torch_distributions():
    q_mean, q_log_var = torch.randn(6, 4), torch.randn(6, 4)
    q = D.Independent(D.Normal(q_mean, (0.5 * q_log_var).exp()), 1)
    p = D.Independent(D.Normal(torch.zeros(4), torch.ones(4)), 1)
    torch.testing.assert_close(kl_to_prior(q_mean, q_log_var), D.kl_divergence(q, p))


def test_kl_to_prior_matches_monte_carlo_within_its_standard_error():
    q_mean = torch.tensor([[0.3, -1.2, 0.8]], dtype=torch.float64)
    q_log_var = torch.tensor([[-0.5, 0.4, -1.5]], dtype=torch.float64)
    n = 200_000
    z = reparameterize(q_mean, q_log_var, n, gen())[:, 0]  # (n, 3)
    q = D.Independent(D.Normal(q_mean[0], (0.5 * q_log_var[0]).exp()), 1)
    p = D.Independent(D.Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1)
    log_ratio = q.log_prob(z) - p.log_prob(z)
    standard_error = log_ratio.std() / math.sqrt(n)
    assert abs(log_ratio.mean() - kl_to_prior(q_mean, q_log_var)[0]) < 4 * standard_error


def test_log_px_given_z_matches_torch_distributions():
    x = torch.bernoulli(torch.full((4, 10), 0.4))
    z = torch.randn(3, 4, 2)
    model = vaetut.VAE(10, 2, hidden=(8,))
    expected = D.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
    torch.testing.assert_close(log_px_given_z(model, x, z), expected)

    model = vaetut.VAE(10, 2, hidden=(8,), likelihood="gaussian")
    with torch.no_grad():
        model.decoder.log_var.copy_(torch.linspace(-1, 1, 10))
    x = torch.randn(4, 10)
    expected = D.Normal(model.decoder(z), (0.5 * model.decoder.log_var).exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(log_px_given_z(model, x, z), expected)


def test_reparameterized_sample_has_requested_mean_and_variance():
    q_mean, q_log_var = torch.tensor([[1.5, -2.0]]), torch.tensor([[0.7, -1.0]])
    n = 100_000
    z = reparameterize(q_mean, q_log_var, n, gen(1))
    assert z.shape == (n, 1, 2)
    var = q_log_var.exp()[0]
    # the sample mean has standard error sqrt(var / n); the sample variance sqrt(2 var^2 / n)
    assert ((z.mean(0)[0] - q_mean[0]).abs() < 4 * (var / n).sqrt()).all()
    assert ((z.var(0)[0] - var).abs() < 4 * (2 * var**2 / n).sqrt()).all()


def test_reparameterized_sample_is_differentiable_in_mean_and_log_var():
    q_mean = torch.zeros(1, 2, requires_grad=True)
    q_log_var = torch.zeros(1, 2, requires_grad=True)
    reparameterize(q_mean, q_log_var, 5, gen()).sum().backward()
    assert q_mean.grad is not None and torch.all(q_mean.grad == 5)
    assert q_log_var.grad is not None and q_log_var.grad.abs().sum() > 0


def test_elbo_monte_carlo_term_averages_samples():
    model = vaetut.VAE(10, 2, hidden=(8,))
    x = torch.bernoulli(torch.full((3, 10), 0.5))
    terms = vaetut.elbo(model, x, n_samples=5, generator=gen(3))
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, 5, gen(3))
    torch.testing.assert_close(terms.log_px_given_z, log_px_given_z(model, x, z).mean(0))


def test_elbo_is_below_iwae_and_iwae_rises_with_k(digits):
    model = vaetut.VAE(64, 4, hidden=(32,))
    vaetut.fit(model, digits.train, epochs=3, batch_size=64, lr=3e-3, device="cpu",
               progress=False)
    x = digits.test
    with torch.no_grad():
        elbo_mean = vaetut.elbo(model, x, n_samples=200, generator=gen(0)).elbo.mean()
        bounds = [vaetut.iwae_bound(model, x, k, generator=gen(k)).mean() for k in (1, 10, 100)]
    assert abs(bounds[0] - elbo_mean) < 0.3  # IWAE_1 is an ELBO estimate
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] - bounds[0] > 0.1


def test_iwae_chunks_combine_like_one_log_sum_exp(monkeypatch):
    # Feed every chunking the same noise, drawn from one fixed bank in order: the bound
    # must not depend on how the k samples were split.
    model = vaetut.VAE(10, 2, hidden=(8,))
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    bank = torch.randn(50, 4, 2, generator=gen(5))

    def from_bank(q_mean, q_log_var, n_samples=1, generator=None):
        nonlocal used
        eps, used = bank[used:used + n_samples], used + n_samples
        return q_mean + torch.exp(0.5 * q_log_var) * eps

    monkeypatch.setattr(vaetut.bounds, "reparameterize", from_bank)
    results = []
    for chunk_size in (50, 1, 3, 7):
        used = 0
        with torch.no_grad():
            results.append(vaetut.iwae_bound(model, x, k=50, chunk_size=chunk_size))
        assert used == 50
    q_mean, q_log_var = model.encoder(x)
    z = q_mean + torch.exp(0.5 * q_log_var) * bank
    log_w = (log_px_given_z(model, x, z) + D.Normal(0.0, 1.0).log_prob(z).sum(-1)
             - D.Normal(q_mean, (0.5 * q_log_var).exp()).log_prob(z).sum(-1))
    expected = torch.logsumexp(log_w, 0) - math.log(50)
    for result in results:
        torch.testing.assert_close(result, expected.detach())


def test_iwae_default_chunking_bounds_memory():
    model = vaetut.VAE(10, 2, hidden=(8,))
    x = torch.rand(4, 10)
    calls = []
    original = model.decoder.forward
    model.decoder.forward = lambda z: calls.append(z.shape[0]) or original(z)
    vaetut.iwae_bound(model, x, k=1000, max_elements=400)  # 400 // (4 * 10) = 10 samples a chunk
    assert calls == [10] * 100


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 11), "x must have shape"),
    (torch.rand(3), "x must have shape"),
    (torch.full((3, 10), 1.5), r"x must lie in \[0, 1\]"),
    (torch.full((3, 10), float("nan")), "x contains NaN"),
    (torch.ones(3, 10, dtype=torch.long), "x must be a floating-point"),
])
def test_bad_input_names_the_argument(bad, match):
    model = vaetut.VAE(10, 2)
    with pytest.raises(ValueError, match=match):
        vaetut.elbo(model, bad)
    with pytest.raises(ValueError, match=match):
        vaetut.iwae_bound(model, bad, k=2)


def test_gaussian_likelihood_accepts_values_outside_unit_interval():
    model = vaetut.VAE(10, 2, likelihood="gaussian")
    assert torch.isfinite(vaetut.elbo(model, torch.randn(3, 10) * 5).elbo).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_samples=0), "n_samples must be a positive int"),
    (dict(n_samples=1.5), "n_samples must be a positive int"),
])
def test_bad_sample_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vaetut.elbo(vaetut.VAE(10, 2), torch.rand(2, 10), **kwargs)
    with pytest.raises(ValueError, match="k must be a positive int"):
        vaetut.iwae_bound(vaetut.VAE(10, 2), torch.rand(2, 10), k=0)


def test_float64_data_on_a_float32_model_are_refused_with_the_fix():
    model, x = vaetut.VAE(10, 2), torch.rand(3, 10, dtype=torch.float64)  # as from_numpy gives
    for call in (lambda: vaetut.elbo(model, x), lambda: vaetut.iwae_bound(model, x, k=2)):
        with pytest.raises(ValueError, match=r"x has dtype torch\.float64 but the model's "
                                             r"weights are torch\.float32.*x\.float\(\)"):
            call()
    # a float64 model takes float64 data
    assert vaetut.elbo(model.double(), x).elbo.dtype == torch.float64


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_empty_input_is_refused(likelihood):
    model = vaetut.VAE(10, 2, likelihood=likelihood)
    with pytest.raises(ValueError, match=r"x is empty"):
        vaetut.elbo(model, torch.rand(0, 10))
    with pytest.raises(ValueError, match=r"x is empty"):
        vaetut.iwae_bound(model, torch.rand(0, 10), k=2)

"""vaetut.bounds: IWAE on the exact model, the IWAE objective, and optimize_q."""
import math

import pytest
import torch
from torch import distributions as D

import vaetut
from vaetut import LinearGaussian, bounds
from vaetut.distributions import draw_eps
from vaetut.exact import DTYPE
from vaetut.objective import iwae_objective


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ppca():
    """A 3-latent PPCA fit to grey digits, with z rotated so that its posterior
    covariance is not diagonal (the same p(x))."""
    x = vaetut.data.load_digits().train.double()
    model = LinearGaussian.from_pca(x, 3)
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=DTYPE, generator=gen(3)))[0]
    return LinearGaussian(model.W @ rot, model.b, model.noise_var), x[:40]


@pytest.fixture(scope="module")
def skewed():
    """A small PPCA whose two latent columns are nearly parallel, so that its posterior
    is strongly correlated, and 20 draws from it."""
    w0 = torch.randn(10, 1, dtype=DTYPE, generator=gen(4))
    W = torch.cat([w0, w0 + 0.3 * torch.randn(10, 1, dtype=DTYPE, generator=gen(5))], 1)
    model = LinearGaussian(W, torch.zeros(10, dtype=DTYPE), torch.tensor(0.5, dtype=DTYPE))
    z = torch.randn(20, 2, dtype=DTYPE, generator=gen(6))
    return model, z @ W.T + 0.5 ** 0.5 * torch.randn(20, 10, dtype=DTYPE, generator=gen(7))


def test_iwae_exact_is_log_px_for_the_posterior(ppca):
    model, x = ppca
    mu, cov = model.posterior(x)
    for k in (1, 7, 300):
        got = bounds.iwae_exact(model, x, mu, cov, k, gen(k), chunk_size=64)
        torch.testing.assert_close(got, model.log_evidence(x), rtol=0, atol=1e-9)


def test_iwae_exact_log_weights_match_torch_distributions(ppca):
    model, x = ppca
    x = x[:5]
    mu, cov = model.posterior(x)
    q_cov = 1.7 * cov
    k = 11
    got = bounds.iwae_exact(model, x, mu, q_cov, k, gen(1))
    z = vaetut.exact.sample_q(mu, q_cov, k, gen(1))  # the same draws
    lik = D.Independent(D.Normal(z @ model.W.T + model.b, model.noise_var.sqrt()), 1)
    prior = D.Independent(D.Normal(torch.zeros(3, dtype=DTYPE), torch.ones(3, dtype=DTYPE)), 1)
    q = D.MultivariateNormal(mu, q_cov)
    log_w = lik.log_prob(x) + prior.log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(got, torch.logsumexp(log_w, 0) - math.log(k))


def test_iwae_exact_rises_from_the_elbo_to_log_px(ppca):
    model, x = ppca
    mu, cov = model.posterior(x)
    q_cov = 2.0 * torch.diag(cov.diagonal())  # not the posterior: diagonal and too wide
    log_px = model.log_evidence(x)
    exact_gap = (log_px - model.elbo(x, mu, q_cov)).mean()
    assert exact_gap > 0.3
    gaps = {k: float((log_px - bounds.iwae_exact(model, x, mu, q_cov, k, gen(k))).mean())
            for k in (1, 10, 100, 3000)}
    # IWAE_1 estimates the ELBO: within 4 standard errors over 50 draws per example
    ones = torch.stack([log_px - bounds.iwae_exact(model, x, mu, q_cov, 1, gen(100 + i))
                        for i in range(50)])
    assert abs(ones.mean() - exact_gap) < 4 * ones.std() / ones.numel() ** 0.5
    # each estimate is noisy (IWAE_k is a bound in expectation); the gaps shrink with k
    assert gaps[1] > 0.3 and abs(gaps[10]) < 0.1 and abs(gaps[100]) < 0.05
    assert abs(gaps[3000]) < 0.01


def test_best_diagonal_q_is_a_stationary_point_of_the_exact_elbo(skewed):
    model, x = skewed
    mean, cov = bounds.best_diagonal_q(model, x)
    assert torch.count_nonzero(cov - torch.diag(cov.diagonal())) == 0
    m = mean.clone().requires_grad_(True)
    log_var = cov.diagonal().log().expand(len(x), -1).clone().requires_grad_(True)
    value = model.elbo(x, m, torch.diag_embed(log_var.exp())).sum()
    g_m, g_v = torch.autograd.grad(value, [m, log_var])
    assert g_m.abs().max() < 1e-9 and g_v.abs().max() < 1e-9
    mu, post_cov = model.posterior(x)
    gap = model.kl_to_posterior(x, mean, cov)
    assert (gap > 0.5).all()  # the posterior is not diagonal, so a diagonal q has a gap
    assert model.kl_to_posterior(x, mu, post_cov).abs().max() < 1e-12  # full covariance: none
    for delta in (1e-3, -1e-3):  # moving any variance away only widens the gap
        moved = cov + delta * torch.diag(torch.tensor([1.0, 0.0], dtype=DTYPE))
        assert (model.kl_to_posterior(x, mean, moved) > gap).all()


@pytest.mark.slow
def test_optimize_q_on_the_exact_model_reaches_the_best_diagonal_q(skewed):
    model, x = skewed
    result = bounds.optimize_q(model, x, steps=400, lr=0.1, n_samples=300, generator=gen(0))
    best_mean, best_cov = bounds.best_diagonal_q(model, x)
    elbo_opt = model.elbo(x, result.q_mean, torch.diag_embed(result.q_log_var.exp()))
    elbo_best = model.elbo(x, best_mean, best_cov)
    # within 0.03 nats of the optimum (the noise bank's own optimum is slightly off)
    assert (elbo_best - elbo_opt).max() < 0.03
    assert (elbo_best - elbo_opt).min() > -1e-9  # and never above it
    assert (result.q_mean - best_mean).abs().max() < 0.05
    # the best diagonal q is not the posterior: a gap remains that a full covariance closes
    assert (model.log_evidence(x) - elbo_opt > 0.5).all()
    assert (result.elbo > result.elbo_start + 1).all()  # started from the prior


@pytest.fixture(scope="module")
def trained_vae():
    torch.manual_seed(0)
    digits = vaetut.data.load_digits(binarize="fixed")
    model = vaetut.VAE(64, 4, hidden=(32,))
    vaetut.fit(model, digits.train, epochs=3, batch_size=128, lr=3e-3, device="cpu",
               progress=False)
    return model, digits.test[:30]


def test_optimize_q_never_lowers_an_examples_elbo(trained_vae):
    model, x = trained_vae
    model.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    result = bounds.optimize_q(model, x, steps=100, lr=0.05, n_samples=64, generator=gen(1))
    with torch.no_grad():
        q_mean, q_log_var = model.encoder(x)
    torch.testing.assert_close(result.elbo_start, bounds.elbo_of_q(
        model, x, q_mean, q_log_var, draw_eps((64, 30, 4), gen(1))).elbo)
    assert (result.elbo >= result.elbo_start - 1e-4).all()  # on the noise bank it used
    assert (result.elbo - result.elbo_start).mean() > 0.1
    # on a fresh bank of 4000 draws the gain holds on average (it is not the bank's noise)
    eps = draw_eps((4000, 30, 4), gen(2))
    with torch.no_grad():
        fresh_opt = bounds.elbo_of_q(model, x, result.q_mean, result.q_log_var, eps).elbo
        fresh_enc = bounds.elbo_of_q(model, x, q_mean, q_log_var, eps).elbo
    assert (fresh_opt - fresh_enc).mean() > 0.05
    assert (fresh_opt - fresh_enc).min() > -0.1
    for p, b in zip(model.parameters(), before):  # the decoder and encoder are untouched
        assert torch.equal(p, b) and p.grad is None


def test_elbo_of_q_at_the_encoder_is_vaetut_elbo(trained_vae):
    model, x = trained_vae
    eps = torch.randn(5, len(x), model.z_dim, generator=gen(4))
    with torch.no_grad():
        q_mean, q_log_var = model.encoder(x)
        got = bounds.elbo_of_q(model, x, q_mean, q_log_var, eps)
        want = vaetut.elbo(model, x, 5, gen(4))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_iwae_objective_matches_iwae_bound_and_trains(trained_vae):
    model, x = trained_vae
    got = iwae_objective(model, x, 16, gen(5))
    torch.testing.assert_close(got.elbo, vaetut.iwae_bound(model, x, 16, generator=gen(5)))
    ref = vaetut.elbo(model, x, 16, gen(5))
    torch.testing.assert_close(got.log_px_given_z, ref.log_px_given_z)
    torch.testing.assert_close(got.kl_to_prior, ref.kl_to_prior)
    grads = torch.autograd.grad(got.elbo.mean(), [model.encoder.mean.weight,
                                                  model.decoder.net[0].weight])
    assert all(g.abs().sum() > 0 for g in grads)  # reaches the encoder and the decoder
    with pytest.raises(ValueError, match="n_samples"):
        iwae_objective(model, x, 0)


def test_fit_accepts_the_iwae_objective():
    torch.manual_seed(0)
    digits = vaetut.data.load_digits(binarize="fixed")
    model = vaetut.VAE(64, 4, hidden=(32,))
    history = vaetut.fit(model, digits.train[:512], digits.test[:64], epochs=3, batch_size=128,
                         lr=3e-3, device="cpu", progress=False, n_samples=5,
                         objective=iwae_objective)
    assert history["train_elbo"][-1] > history["train_elbo"][0] + 1


# ----- the IWAE gradient's signal-to-noise ratio ---------------------------------------
def flat_grads(value, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])


def test_iwae_gradient_draws_are_the_gradient_fit_differentiates(trained_vae):
    model, x = trained_vae
    model.zero_grad(set_to_none=True)  # fit left its last gradients there
    got = bounds.iwae_gradient_draws(model, x, 7, 2, "iwae", gen(8))
    g = gen(8)  # the same noise, draw by draw
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())
    for row in range(2):
        value = iwae_objective(model, x, 7, g).elbo.mean()
        want = flat_grads(value, enc + dec)
        torch.testing.assert_close(got.encoder[row], want[:len(got.encoder[row])])
        torch.testing.assert_close(got.decoder[row], want[len(got.encoder[row]):])
    assert not torch.equal(got.encoder[0], got.encoder[1])  # fresh noise for each draw
    for p in model.parameters():
        assert p.grad is None


def test_dreg_changes_only_the_encoders_gradient(trained_vae):
    model, x = trained_vae
    iwae = bounds.iwae_gradient_draws(model, x, 5, 3, "iwae", gen(9))
    dreg = bounds.iwae_gradient_draws(model, x, 5, 3, "dreg", gen(9))
    torch.testing.assert_close(dreg.decoder, iwae.decoder)  # the decoder's is the same
    assert (dreg.encoder - iwae.encoder).abs().max() > 1e-3
    with pytest.raises(ValueError, match="estimator"):
        bounds.iwae_gradient_draws(model, x, 5, 3, "stl")


def test_dreg_is_unbiased_and_a_wrong_weighting_is_not(trained_vae):
    """DReG's encoder gradient has the IWAE gradient's mean: per parameter, the difference
    of the two means over independent draws is within its standard error (the squared
    z-scores average about 1). Weighting the path term by w~ instead of w~^2 (the
    'sticking the landing' estimator applied to IWAE, which Tucker et al. 2019 show is
    biased) moves the mean by many standard errors."""
    model, x = trained_vae
    # 300 draws: the wrong weighting's mean squared z-score is about 70 here (220 at 1000
    # draws, growing with the draws), the unbiased one's about 1
    x, k, n = x[:10], 10, 300
    iwae = bounds.iwae_gradient_draws(model, x, k, n, "iwae", gen(10)).encoder
    dreg = bounds.iwae_gradient_draws(model, x, k, n, "dreg", gen(11)).encoder

    def mean_squared_z(a, b):
        se2 = a.var(0) / len(a) + b.var(0) / len(b)
        keep = se2 > 0
        return float(((a.mean(0) - b.mean(0))[keep] ** 2 / se2[keep]).mean())

    assert mean_squared_z(iwae, dreg) < 1.3
    # the biased variant, computed here by hand: sum_i w~_i d log w_i/dz_i dz_i/dphi
    params, g, rows = list(model.encoder.parameters()), gen(11), []
    for _ in range(n):
        q_mean, q_log_var = model.encoder(x)
        z = vaetut.distributions.reparameterize(q_mean, q_log_var, k, g)
        log_w = (vaetut.distributions.log_px_given_z(model, x, z)
                 + vaetut.distributions.log_standard_normal(z)
                 - vaetut.distributions.log_diag_normal(z, q_mean.detach(), q_log_var.detach()))
        rows.append(flat_grads((torch.softmax(log_w, 0).detach() * log_w).sum(0).mean(),
                               params))
    assert mean_squared_z(iwae, torch.stack(rows)) > 3


def test_signal_to_noise():
    draws = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0], [2.0, 0.0, 0.0]])
    snr = bounds.signal_to_noise(draws)
    torch.testing.assert_close(snr[[0, 2]], torch.tensor([2.0 / 1.0, 0.0]))
    assert torch.isnan(snr[1])  # a gradient that is always 0 has no SNR
    big = 0.5 + 2.0 * torch.randn(20000, 3, generator=gen(12))
    torch.testing.assert_close(bounds.signal_to_noise(big), torch.full((3,), 0.25),
                               atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="draws"):
        bounds.signal_to_noise(draws[:1])


@pytest.mark.slow
def test_more_samples_lower_the_encoders_snr_and_raise_the_decoders(trained_vae):
    """Rainforth et al. 2018: the IWAE gradient's SNR falls like 1/sqrt(k) for the encoder
    and rises like sqrt(k) for the decoder; DReG's encoder SNR does not fall."""
    model, x = trained_vae
    snr = {}
    for est in bounds.ESTIMATORS:
        for k in (1, 100):
            d = bounds.iwae_gradient_draws(model, x, k, 300, est, gen(k))
            snr[est, k] = [float(torch.nanmedian(bounds.signal_to_noise(g)))
                           for g in (d.encoder, d.decoder)]
    assert snr["iwae", 100][0] < 0.6 * snr["iwae", 1][0]
    assert snr["iwae", 100][1] > 2 * snr["iwae", 1][1]
    assert snr["dreg", 100][0] > snr["iwae", 100][0] * 2
    assert snr["dreg", 100][0] > 0.8 * snr["dreg", 1][0]

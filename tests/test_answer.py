"""Tests of what the answer page computes: forward-mode derivatives (gradients), the climbs
along one decoder parameter (em), the joint-KL identity and the diagonal q's two optima
(bounds), and the climb's figure (plots)."""
import math

import pytest
import torch

import vaetut
from vaetut import bounds, em, plots
from vaetut import gradients as G
from vaetut.distributions import draw_eps
from vaetut.exact import DTYPE, LinearGaussian


def noise(model, n_samples, batch_size, generator):
    """draw_eps in the model's dtype."""
    return draw_eps((n_samples, batch_size, model.z_dim), generator,
                    next(model.parameters()).dtype)


@pytest.fixture(scope="module")
def grey():
    return vaetut.data.load_digits().train.double()[:400]


@pytest.fixture(scope="module")
def ml(grey):
    return LinearGaussian.from_pca(grey, 2)


def test_forward_mode_matches_reverse_mode():
    torch.manual_seed(0)
    model = vaetut.VAE(x_dim=64, z_dim=4, hidden=(16,))
    x = vaetut.data.load_digits(binarize="fixed").train[:32]
    eps = noise(model, 1, 32, torch.Generator().manual_seed(1))
    loss = -vaetut.elbo(model, x, len(eps), eps=eps).elbo.mean()
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))
    gen = torch.Generator().manual_seed(2)
    for only in (None, "encoder.", "decoder."):
        direction = {n: torch.randn(p.shape, generator=gen) * (only is None or n.startswith(only))
                     for n, p in model.named_parameters()}
        reverse = sum(float((grads[n] * direction[n]).sum()) for n in names)
        forward = G.forward_directional(model, x, eps, direction)
        assert forward == pytest.approx(reverse, rel=1e-4, abs=1e-5)
        assert abs(reverse) > 1e-3  # a direction the loss actually changes along


def test_best_scale_is_the_maximum_of_the_bound(ml, grey):
    q_mean, q_cov = em.scaled(ml, 0.4).posterior(grey)
    best = em.best_scale(ml, grey, q_mean, q_cov)
    s = torch.tensor(best, dtype=DTYPE, requires_grad=True)
    value = LinearGaussian(s * ml.W, ml.b, ml.noise_var).elbo(grey, q_mean, q_cov).mean()
    (slope,) = torch.autograd.grad(value, s)
    assert abs(float(slope)) < 1e-8  # stationary, found by autograd independently
    _, elbo = em.bound_slice(ml, grey, torch.tensor([best - 0.01, best, best + 0.01]), q_mean, q_cov)
    assert elbo[1] > elbo[0] and elbo[1] > elbo[2]  # a maximum, not a minimum


def test_bound_slice_touches_and_is_tangent_at_the_posterior(ml, grey):
    s0, h = 0.5, 1e-4
    q_mean, q_cov = em.scaled(ml, s0).posterior(grey)
    scales = torch.tensor([0.3, s0 - h, s0, s0 + h, 0.9], dtype=DTYPE)
    log_px, elbo = em.bound_slice(ml, grey, scales, q_mean, q_cov)
    assert (elbo <= log_px + 1e-10).all()  # a lower bound everywhere
    assert abs(float(log_px[2] - elbo[2])) < 1e-9  # touches at s0
    assert float(log_px[0] - elbo[0]) > 1e-3 and float(log_px[4] - elbo[4]) > 1e-3
    slope_logp = (log_px[3] - log_px[1]) / (2 * h)
    slope_elbo = (elbo[3] - elbo[1]) / (2 * h)
    assert abs(float(slope_logp)) > 1.0  # not at a maximum: a real slope to compare
    assert float(slope_elbo) == pytest.approx(float(slope_logp), rel=1e-5)  # Fisher's identity


def test_em_in_scale_climbs_and_closes_the_gap(ml, grey):
    q_mean, q_cov = em.scaled(ml, 0.3).posterior(grey)
    climb = em.em_in_scale(ml, grey, 0.3, q_mean, q_cov, 3)
    assert climb.kind == ["start", "E", "M", "E", "M", "E", "M"]
    for i, kind in enumerate(climb.kind):
        if kind == "E":
            assert abs(climb.gap[i]) < 1e-9
    assert all(b >= a - 1e-10 for a, b in zip(climb.log_px, climb.log_px[1:]))  # never down
    assert all(b >= a - 1e-10 for a, b in zip(climb.elbo, climb.elbo[1:]))  # F never down
    assert climb.s[-1] > climb.s[0] + 0.2


def test_em_in_scale_fixed_point_is_the_maximum_likelihood_scale(ml, grey):
    q_mean, q_cov = ml.posterior(grey)
    assert em.best_scale(ml, grey, q_mean, q_cov) == pytest.approx(1.0, abs=1e-6)


def test_joint_ascent_moves_both_and_closes_the_gap(ml, grey):
    climb, encoder = em.joint_ascent_in_scale(ml, grey, 0.3, 150, lr=0.02)
    assert set(climb.kind[1:]) == {"joint"} and len(climb.s) == 151
    assert climb.gap[0] > 1.0 and climb.gap[-1] < 0.05 * climb.gap[0]
    assert climb.log_px[-1] > climb.log_px[0] + 2.0
    assert encoder.A.abs().max() > 0.01  # the encoder moved off the prior


def test_diagonal_q_optima_against_numerical_minimization():
    a = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=DTYPE)
    post = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=DTYPE), a)
    reverse_v, forward_v = bounds.diagonal_q_optima(a)

    def fit(direction):
        log_v = torch.zeros(2, dtype=DTYPE, requires_grad=True)
        opt = torch.optim.LBFGS([log_v], max_iter=200, tolerance_grad=1e-12)

        def closure():
            opt.zero_grad()
            q = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=DTYPE),
                                                       torch.diag(log_v.exp()))
            kl = (torch.distributions.kl_divergence(q, post) if direction == "reverse"
                  else torch.distributions.kl_divergence(post, q))
            kl.backward()
            return kl
        opt.step(closure)
        return log_v.detach().exp()

    torch.testing.assert_close(fit("reverse"), reverse_v, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(fit("forward"), forward_v, rtol=1e-6, atol=1e-8)
    assert (forward_v > 2 * reverse_v).all()  # correlated posterior: the two disagree
    same = bounds.diagonal_q_optima(torch.diag(torch.tensor([0.5, 2.0], dtype=DTYPE)))
    torch.testing.assert_close(same[0], same[1])
    assert math.isclose(float(reverse_v[0]), 1 - 0.8 ** 2, rel_tol=1e-12)


def test_draw_climb_draws_the_curves_and_the_path(ml, grey):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q_mean, q_cov = em.scaled(ml, 0.3).posterior(grey)
    climb = em.em_in_scale(ml, grey, 0.3, q_mean, q_cov, 2)
    fig, ax = plt.subplots()
    plots.draw_climb(ax, ml, grey, climb, torch.linspace(0.2, 1.4, 25, dtype=DTYPE), curves_at=[1, 3])
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == [r"$\log p_\theta(x)$", "ELBO, q of step 1", "ELBO, q of step 3"]
    assert len(ax.texts) == len(climb.s) - 1  # one arrow per step
    plt.close(fig)


def test_scale_gradient_split_against_finite_differences(ml, grey):
    q_mean, q_cov = torch.zeros(len(grey), 2, dtype=DTYPE), torch.eye(2, dtype=DTYPE)  # q = prior
    s, h = 0.3, 1e-5
    split = em.scale_gradient_split(ml, grey, s, q_mean, q_cov)
    log_px, elbo = em.bound_slice(ml, grey, torch.tensor([s - h, s + h], dtype=DTYPE), q_mean, q_cov)
    assert split.d_elbo == pytest.approx(float(elbo[1] - elbo[0]) / (2 * h), rel=1e-6)
    assert split.d_log_px == pytest.approx(float(log_px[1] - log_px[0]) / (2 * h), rel=1e-6)
    # three closed forms, one identity: the ELBO's slope is log p's minus the gap's
    assert split.d_elbo == pytest.approx(split.d_log_px + split.minus_d_gap, rel=1e-9, abs=1e-9)
    # at q = prior the gap grows with s (W = 0 makes the posterior the prior)
    assert split.minus_d_gap < -1.0
    # at a q that is the posterior of theta(s) the gap's slope is zero (tangency)
    at_post = em.scale_gradient_split(ml, grey, s, *em.scaled(ml, s).posterior(grey))
    assert abs(at_post.minus_d_gap) < 1e-8 and at_post.d_log_px > 1.0


def test_joint_kl_identity_on_a_random_model_against_monte_carlo():
    g = torch.Generator().manual_seed(0)
    d, k = 5, 2
    model = LinearGaussian(torch.randn(d, k, dtype=DTYPE, generator=g),
                           torch.randn(d, dtype=DTYPE, generator=g), torch.tensor(0.3, dtype=DTYPE))
    a = torch.randn(d, d, dtype=DTYPE, generator=g)
    data_mean = torch.randn(d, dtype=DTYPE, generator=g)
    data_cov = a @ a.T / d + 0.2 * torch.eye(d, dtype=DTYPE)
    enc_A = 0.3 * torch.randn(k, d, dtype=DTYPE, generator=g)
    enc_c = torch.randn(k, dtype=DTYPE, generator=g)
    q_cov = torch.tensor([[0.4, 0.1], [0.1, 0.2]], dtype=DTYPE)
    r = bounds.joint_kl_identity(model, data_mean, data_cov, enc_A, enc_c, q_cov)
    assert r.expected_elbo == pytest.approx(-r.joint_kl - r.data_entropy, rel=1e-10)
    assert r.joint_kl == pytest.approx(r.marginal_kl + r.expected_gap, rel=1e-10)
    assert r.expected_gap > 0.1 and r.marginal_kl > 0.1  # neither side trivially zero
    # the expectation over p_D by plain Monte Carlo (no sigma points)
    gen = torch.Generator().manual_seed(1)
    chol = torch.linalg.cholesky(data_cov)
    x = data_mean + torch.randn(100_000, d, dtype=DTYPE, generator=gen) @ chol.T
    values = model.elbo(x, x @ enc_A.T + enc_c, q_cov)
    stderr = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - r.expected_elbo) < 5 * stderr
    # with q the exact posterior the gap vanishes and the joint KL is the marginal one
    at_post = bounds.joint_kl_identity(model, data_mean, data_cov, *model.posterior_map())
    assert abs(at_post.expected_gap) < 1e-10
    assert at_post.joint_kl == pytest.approx(at_post.marginal_kl, rel=1e-10)

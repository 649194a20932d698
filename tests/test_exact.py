"""Tests for vaetut.exact: the identity log p(x) = ELBO + KL(q || p(z|x)) on probabilistic
PCA, each closed form against an independent reference (torch.distributions, sklearn)."""
import math

import pytest
import torch
from sklearn.decomposition import PCA
from torch.distributions import MultivariateNormal, Normal, kl_divergence

import vaetut
from vaetut.exact import LinearGaussian, sample_q

F64 = torch.float64


def random_model(seed, d=6, k=3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, dtype=F64, generator=g)
    b = torch.randn(d, dtype=F64, generator=g)
    noise_var = 0.1 + torch.rand((), dtype=F64, generator=g)
    return LinearGaussian(W, b, noise_var), g


def random_q(g, n, k, kind):
    """A random Gaussian q: mean (n, k) and a full, diagonal or shared covariance."""
    q_mean = 2 * torch.randn(n, k, dtype=F64, generator=g)
    if kind == "diagonal":
        q_cov = torch.diag_embed(0.05 + torch.rand(n, k, dtype=F64, generator=g))
    else:
        a = torch.randn(n, k, k, dtype=F64, generator=g)
        q_cov = a @ a.mT / k + 0.05 * torch.eye(k, dtype=F64)
        if kind == "shared":
            q_cov = q_cov[0]
    return q_mean, q_cov


def as_distribution(q_mean, q_cov):
    return MultivariateNormal(q_mean, covariance_matrix=q_cov.expand(len(q_mean), -1, -1))


@pytest.fixture(scope="module")
def digits_x():
    return vaetut.data.load_digits().train.to(F64)


def test_exported():
    assert vaetut.LinearGaussian is LinearGaussian


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared"])
@pytest.mark.parametrize("seed", range(5))
def test_identity_elbo_plus_kl_is_log_evidence(seed, kind):
    model, g = random_model(seed)
    x = 3 * torch.randn(50, model.x_dim, dtype=F64, generator=g)
    q_mean, q_cov = random_q(g, 50, model.z_dim, kind)
    total = model.elbo(x, q_mean, q_cov) + model.kl_to_posterior(x, q_mean, q_cov)
    assert (total - model.log_evidence(x)).abs().max() < 1e-9


def test_identity_on_digits_model(digits_x):
    model = LinearGaussian.from_pca(digits_x, 4)
    g = torch.Generator().manual_seed(1)
    q_mean, q_cov = random_q(g, len(digits_x), 4, "full")
    gap = model.elbo(digits_x, q_mean, q_cov) + model.kl_to_posterior(digits_x, q_mean, q_cov) \
        - model.log_evidence(digits_x)
    assert gap.abs().max() < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_kl_zero_exactly_at_posterior_positive_elsewhere(seed):
    model, g = random_model(seed)
    x = torch.randn(20, model.x_dim, dtype=F64, generator=g)
    mean, cov = model.posterior(x)
    assert model.kl_to_posterior(x, mean, cov).abs().max() < 1e-12
    assert (model.elbo(x, mean, cov) - model.log_evidence(x)).abs().max() < 1e-9
    for q_mean, q_cov in [(mean + 0.01, cov), (mean, 1.1 * cov), random_q(g, 20, 3, "full"),
                          random_q(g, 20, 3, "diagonal")]:
        assert (model.kl_to_posterior(x, q_mean, q_cov) > 0).all()
        assert (model.elbo(x, q_mean, q_cov) < model.log_evidence(x)).all()


def test_posterior_against_bayes_rule_by_torch_distributions():
    """p(z|x) is proportional to p(z) p(x|z): log p(z) + log p(x|z) - log p(z|x) must be the
    same number (log p(x)) for every z."""
    model, g = random_model(7)
    x = torch.randn(4, model.x_dim, dtype=F64, generator=g)
    mean, cov = model.posterior(x)
    z = torch.randn(10, 4, model.z_dim, dtype=F64, generator=g)
    prior = Normal(torch.zeros(model.z_dim, dtype=F64), 1.0).log_prob(z).sum(-1)
    lik = MultivariateNormal(z @ model.W.T + model.b,
                             model.noise_var * torch.eye(model.x_dim, dtype=F64)).log_prob(x)
    post = MultivariateNormal(mean, cov).log_prob(z)
    assert (prior + lik - post - model.log_evidence(x)).abs().max() < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_log_evidence_against_multivariate_normal(seed):
    model, g = random_model(seed, d=8, k=2)
    x = 2 * torch.randn(30, 8, dtype=F64, generator=g)
    cov = model.W @ model.W.T + model.noise_var * torch.eye(8, dtype=F64)
    ref = MultivariateNormal(model.b, covariance_matrix=cov).log_prob(x)
    assert torch.allclose(model.log_evidence(x), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_elbo_terms_against_torch_distributions(kind):
    """The closed-form terms against torch's KL and a 50k-sample Monte Carlo average of
    log p(x|z) computed with MultivariateNormal (tolerance: 5 standard errors)."""
    model, g = random_model(3)
    x = torch.randn(5, model.x_dim, dtype=F64, generator=g)
    q_mean, q_cov = random_q(g, 5, model.z_dim, kind)
    terms = model.elbo_terms(x, q_mean, q_cov)
    assert torch.equal(terms.elbo, terms.log_px_given_z - terms.kl_to_prior)
    prior = MultivariateNormal(torch.zeros(model.z_dim, dtype=F64),
                               torch.eye(model.z_dim, dtype=F64))
    kl_ref = kl_divergence(as_distribution(q_mean, q_cov), prior)
    assert torch.allclose(terms.kl_to_prior, kl_ref, rtol=0, atol=1e-10)
    torch.manual_seed(0)
    z = as_distribution(q_mean, q_cov).sample((50_000,))  # (S, N, K)
    lik = MultivariateNormal(z @ model.W.T + model.b,
                             model.noise_var * torch.eye(model.x_dim, dtype=F64)).log_prob(x)
    mc, se = lik.mean(0), lik.std(0) / math.sqrt(len(lik))
    assert ((terms.log_px_given_z - mc).abs() < 5 * se).all()


def test_kl_to_posterior_against_torch_kl():
    model, g = random_model(11)
    x = torch.randn(6, model.x_dim, dtype=F64, generator=g)
    q_mean, q_cov = random_q(g, 6, model.z_dim, "full")
    mean, cov = model.posterior(x)
    ref = kl_divergence(as_distribution(q_mean, q_cov), MultivariateNormal(mean, cov))
    assert torch.allclose(model.kl_to_posterior(x, q_mean, q_cov), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("analytic_kl", [False, True])
def test_monte_carlo_elbo_converges(analytic_kl):
    model, g = random_model(5)
    x = torch.randn(8, model.x_dim, dtype=F64, generator=g)
    q_mean, q_cov = random_q(g, 8, model.z_dim, "full")
    exact = model.elbo(x, q_mean, q_cov)
    stderrs = []
    for n in (100, 10_000):
        est = model.elbo_monte_carlo(x, q_mean, q_cov, n, torch.Generator().manual_seed(n),
                                     analytic_kl=analytic_kl)
        assert ((est.mean - exact).abs() < 4 * est.stderr).all()
        stderrs.append(est.stderr)
    ratio = stderrs[0] / stderrs[1]  # 1/sqrt(n): about 10
    assert ((ratio > 7) & (ratio < 14)).all()


def test_monte_carlo_at_posterior_has_zero_variance():
    """At q = p(z|x), log p(x,z) - log q(z|x) = log p(x) for every z."""
    model, g = random_model(2)
    x = torch.randn(3, model.x_dim, dtype=F64, generator=g)
    mean, cov = model.posterior(x)
    est = model.elbo_monte_carlo(x, mean, cov, 50, g)
    assert (est.stderr < 1e-10).all()
    assert (est.mean - model.log_evidence(x)).abs().max() < 1e-9


def test_sample_q_moments():
    g = torch.Generator().manual_seed(0)
    q_mean, q_cov = random_q(g, 2, 3, "full")
    z = sample_q(q_mean, q_cov, 100_000, g)
    assert z.shape == (100_000, 2, 3)
    assert torch.allclose(z.mean(0), q_mean, atol=0.03)
    centred = z - z.mean(0)
    assert torch.allclose(torch.einsum("sni,snj->nij", centred, centred) / len(z), q_cov,
                          atol=0.03)


def test_from_pca_matches_sklearn(digits_x):
    """sklearn's PCA divides by N - 1; with ddof=1 the two models coincide, and the ML
    (ddof=0) covariance is sklearn's scaled by (N - 1) / N."""
    n = len(digits_x)
    x_np = digits_x.numpy()
    for k in (2, 5, 8):
        pca = PCA(n_components=k, svd_solver="full").fit(x_np)
        fit1 = LinearGaussian.from_pca(digits_x, k, ddof=1)
        ref = torch.from_numpy(pca.score_samples(x_np))
        assert torch.allclose(fit1.log_evidence(digits_x), ref, rtol=0, atol=1e-8)
        assert abs(float(fit1.noise_var) - pca.noise_variance_) < 1e-12
        fit0 = LinearGaussian.from_pca(digits_x, k)
        sk_cov = torch.from_numpy(pca.get_covariance()) * (n - 1) / n
        assert torch.allclose(fit0.marginal_cov(), sk_cov, rtol=0, atol=1e-12)
        cov_ml = torch.cov(digits_x.T, correction=0)
        eig = torch.linalg.eigvalsh(cov_ml).flip(0)
        assert abs(float(fit0.noise_var) - float(eig[k:].mean())) < 1e-12


def test_from_pca_is_the_maximum(digits_x):
    model = LinearGaussian.from_pca(digits_x, 5)
    best = model.log_evidence(digits_x).sum()
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1e-2, 1e-1):
        for _ in range(5):
            W = model.W + scale * torch.randn(model.W.shape, dtype=F64, generator=g)
            assert LinearGaussian(W, model.b, model.noise_var).log_evidence(digits_x).sum() < best
        for factor in (1 - scale, 1 + scale):
            worse = LinearGaussian(model.W, model.b, model.noise_var * factor)
            assert worse.log_evidence(digits_x).sum() < best
    rotation = torch.linalg.qr(torch.randn(5, 5, dtype=F64, generator=g)).Q
    rotated = LinearGaussian(model.W @ rotation, model.b, model.noise_var)
    assert torch.allclose(rotated.log_evidence(digits_x).sum(), best, rtol=1e-12)


def test_closed_forms_are_differentiable_in_parameters():
    """gradcheck of log p(x), the ELBO and the KL to the posterior with respect to W, b and
    noise_var; and at q = p(z|x) (held fixed), d ELBO/d theta = d log p(x)/d theta."""
    model, g = random_model(4, d=4, k=2)
    W = model.W.clone().requires_grad_()
    b = model.b.clone().requires_grad_()
    s = model.noise_var.clone().requires_grad_()
    x = torch.randn(3, 4, dtype=F64, generator=g)
    q_mean, q_cov = random_q(g, 3, 2, "full")

    def forms(W, b, s):
        m = LinearGaussian(W, b, s)
        assert m.W is W and m.b is b and m.noise_var is s  # stored as given
        return (m.log_evidence(x), m.elbo(x, q_mean, q_cov), m.kl_to_posterior(x, q_mean, q_cov))

    assert torch.autograd.gradcheck(forms, (W, b, s))
    mean, cov = LinearGaussian(W, b, s).posterior(x)
    mean, cov = mean.detach(), cov.detach()
    m = LinearGaussian(W, b, s)
    g_elbo = torch.autograd.grad(m.elbo(x, mean, cov).sum(), (W, b, s))
    g_logp = torch.autograd.grad(m.log_evidence(x).sum(), (W, b, s))
    for a, c in zip(g_elbo, g_logp):
        assert torch.allclose(a, c, rtol=0, atol=1e-9)


def test_float32_input_is_cast():
    model, g = random_model(0)
    f32 = LinearGaussian(model.W.float(), model.b.float(), float(model.noise_var))
    assert f32.W.dtype == F64 and f32.noise_var.dtype == F64
    x = torch.randn(2, model.x_dim, generator=g)  # float32 data
    assert f32.log_evidence(x).dtype == F64


@pytest.mark.parametrize("args, name", [
    ((torch.ones(4, 2), torch.ones(3), 1.0), "b"),
    ((torch.ones(4), torch.ones(4), 1.0), "W"),
    ((torch.ones(4, 2), torch.ones(4), 0.0), "noise_var"),
    ((torch.ones(4, 2), torch.ones(4), -1.0), "noise_var"),
    ((torch.ones(4, 2), torch.ones(4), torch.ones(2)), "noise_var"),
    ((torch.full((4, 2), float("nan")), torch.ones(4), 1.0), "W"),
])
def test_bad_model_raises(args, name):
    with pytest.raises(ValueError, match=name):
        LinearGaussian(*args)


def test_bad_inputs_raise():
    model, g = random_model(0)
    x = torch.randn(5, model.x_dim, dtype=F64)
    q_mean, q_cov = random_q(g, 5, model.z_dim, "full")
    with pytest.raises(ValueError, match="x"):
        model.log_evidence(torch.randn(5, model.x_dim + 1))
    with pytest.raises(ValueError, match="x"):
        model.posterior(torch.randn(model.x_dim))
    with pytest.raises(ValueError, match="q_mean"):
        model.elbo(x, q_mean[:4], q_cov)
    with pytest.raises(ValueError, match="q_cov"):
        model.elbo(x, q_mean, q_cov[:, :2, :2])
    not_pd = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="q_cov.*positive definite"):
        model.kl_to_posterior(x, q_mean, not_pd)
    asym = torch.eye(3, dtype=F64)
    asym[0, 1] = 0.5
    with pytest.raises(ValueError, match="q_cov.*symmetric"):
        model.elbo_terms(x, q_mean, asym)
    with pytest.raises(ValueError, match="n_samples"):
        model.elbo_monte_carlo(x, q_mean, q_cov, 0)
    with pytest.raises(ValueError, match="z_dim"):
        LinearGaussian.from_pca(x, model.x_dim)
    with pytest.raises(ValueError, match="n"):
        sample_q(q_mean, q_cov, 0)


def test_the_exact_models_figures_draw():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from vaetut import plots

    model, g = random_model(0, d=4, k=2)
    x = torch.randn(1, 4, dtype=F64, generator=g)
    mean, cov = model.posterior(x)
    fig, (a1, a2) = plt.subplots(1, 2)
    plots.gaussian_contours(a1, mean[0], cov, (-3, 3, -3, 3))
    assert a1.get_xlim() == (-3, 3) and len(a1.collections) > 0
    t = torch.linspace(-1, 1, 5, dtype=F64)
    means = mean + t[:, None]
    xs = x.expand(5, -1)
    plots.bound_and_gap(a2, t, model.log_evidence(xs), model.elbo(xs, means, cov),
                        model.kl_to_posterior(xs, means, cov), "t")
    assert [line.get_label() for line in a2.lines] == ["ELBO", r"$\log p(x)$", "ELBO + KL"]
    plt.close(fig)


# ----- Gaussians over (x, z): the joint-KL identity ------------------------------------------

def random_gaussian(g, n):
    a = torch.randn(n, n, dtype=F64, generator=g)
    return torch.randn(n, dtype=F64, generator=g), a @ a.T / n + 0.1 * torch.eye(n, dtype=F64)


def test_gaussian_kl_and_entropy_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    (m0, c0), (m1, c1) = random_gaussian(g, 5), random_gaussian(g, 5)
    p0, p1 = MultivariateNormal(m0, c0), MultivariateNormal(m1, c1)
    assert float(vaetut.exact.gaussian_kl(m0, c0, m1, c1)) == pytest.approx(
        float(kl_divergence(p0, p1)), rel=1e-10)
    assert float(vaetut.exact.gaussian_kl(m0, c0, m0, c0)) == pytest.approx(0.0, abs=1e-12)
    assert float(vaetut.exact.gaussian_entropy(c0)) == pytest.approx(float(p0.entropy()), rel=1e-10)
    with pytest.raises(ValueError, match="two means"):
        vaetut.exact.gaussian_kl(m0, c0, m1[:4], c1)


def test_sigma_points_have_the_moments_and_give_exact_expectations_of_quadratics():
    g = torch.Generator().manual_seed(1)
    mean, cov = random_gaussian(g, 4)
    points = vaetut.exact.sigma_points(mean, cov)
    assert points.shape == (8, 4)
    torch.testing.assert_close(points.mean(0), mean, rtol=0, atol=1e-12)
    centred = points - mean
    torch.testing.assert_close(centred.T @ centred / len(points), cov, rtol=0, atol=1e-12)
    # E[x^T Q x] = tr(Q cov) + mean^T Q mean, for a quadratic not built from the points
    q = torch.randn(4, 4, dtype=F64, generator=g)
    exact = float(torch.trace(q @ cov) + mean @ q @ mean)
    assert float(((points @ q) * points).sum(1).mean()) == pytest.approx(exact, rel=1e-10)


def test_joint_and_posterior_map_agree_with_the_posterior_by_conditioning():
    model, g = random_model(2, d=5, k=2)
    mean, cov = model.joint()
    d = model.x_dim
    # conditioning the joint Gaussian on x gives p(z|x): A = C_zx C_xx^{-1}, S = C_zz - A C_xz
    a_cond = torch.linalg.solve(cov[:d, :d], cov[:d, d:]).T
    s_cond = cov[d:, d:] - a_cond @ cov[:d, d:]
    A, c, S = model.posterior_map()
    torch.testing.assert_close(A, a_cond, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S, s_cond, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c, -(a_cond @ mean[:d]), rtol=1e-10, atol=1e-12)
    x = torch.randn(7, d, dtype=F64, generator=g)
    post_mean, post_cov = model.posterior(x)
    torch.testing.assert_close(x @ A.T + c, post_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S, post_cov, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov[:d, :d], model.marginal_cov())


def test_data_encoder_joint_against_samples():
    g = torch.Generator().manual_seed(3)
    m, sigma = random_gaussian(g, 3)
    A = torch.randn(2, 3, dtype=F64, generator=g)
    c = torch.randn(2, dtype=F64, generator=g)
    S = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)
    mean, cov = vaetut.exact.data_encoder_joint(m, sigma, A, c, S)
    x = MultivariateNormal(m, sigma).sample((200_000,))
    z = x @ A.T + c + MultivariateNormal(torch.zeros(2, dtype=F64), S).sample((200_000,))
    xz = torch.cat([x, z], 1)
    torch.testing.assert_close(xz.mean(0), mean, rtol=0, atol=0.03)
    torch.testing.assert_close(xz.T.cov(), cov, rtol=0, atol=0.05)

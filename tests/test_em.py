"""Tests of vaetut.em: EM and joint gradient ascent on probabilistic PCA."""
import numpy as np
import pytest
import torch

from vaetut import em
from vaetut.exact import DTYPE, LinearGaussian


def data(n=200, d=6, k=2, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, k, dtype=DTYPE, generator=g)
    z = torch.randn(n, k, dtype=DTYPE, generator=g)
    return z @ w.T + noise * torch.randn(n, d, dtype=DTYPE, generator=g) + 1.0


def start(d=6, k=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return LinearGaussian(0.1 * torch.randn(d, k, dtype=DTYPE, generator=g),
                          torch.zeros(d, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE))


def test_em_never_decreases_log_px_and_reaches_the_closed_form():
    x = data()
    model, history = em.run_em(start(), x, 500)
    lp = np.array(history.log_px)
    assert np.diff(lp).min() >= -1e-10
    assert lp[-1] > lp[0] + 1.0
    target = LinearGaussian.from_pca(x, 2).log_evidence(x).mean().item()
    assert abs(lp[-1] - target) < 1e-6
    assert min(history.gap) > -1e-10  # the ELBO never exceeds log p(x)


def test_m_step_maximizes_the_elbo_of_the_e_step_posterior():
    x = data()
    old = start()
    new, (q_mean, q_cov) = em.em_step(old, x)
    W = new.W.clone().requires_grad_(True)
    b = new.b.clone().requires_grad_(True)
    nv = new.noise_var.clone().requires_grad_(True)
    value = LinearGaussian(W, b, nv).elbo(x, q_mean, q_cov).mean()
    for g in torch.autograd.grad(value, [W, b, nv]):
        assert g.abs().max() < 1e-9  # a stationary point in theta, for the fixed q
    # and the E-step's q is the exact posterior of the old theta: its gap there is zero
    assert old.kl_to_posterior(x, q_mean, q_cov).abs().max() < 1e-10
    assert value > old.elbo(x, q_mean, q_cov).mean()


@pytest.mark.slow
def test_joint_gradient_ascent_reaches_the_closed_form_and_closes_the_gap():
    x = data()
    model, encoder, history = em.run_joint_ascent(start(), x, 1500, lr=0.05)
    target = LinearGaussian.from_pca(x, 2).log_evidence(x).mean().item()
    assert abs(history.log_px[-1] - target) < 0.02
    # Adam at this step size closes the gap, then spikes now and then (a step overshoots and
    # the encoder catches up): the typical gap of the last 200 steps is what is closed
    late = sorted(history.gap[-200:])
    assert late[100] < 0.01 and late[0] < 1e-3 and history.gap[0] > 0.0
    assert history.elbo[-1] > history.elbo[0] + 1.0


def test_perturbed_moves_theta_away_from_the_maximum():
    x = data()
    ml = LinearGaussian.from_pca(x, 2)
    moved = em.perturbed(ml, 0.3, torch.Generator().manual_seed(0))
    assert moved.log_evidence(x).mean() < ml.log_evidence(x).mean() - 0.1


def test_joint_ascent_records_every_nth_step_and_the_last():
    x = data()
    _, _, history = em.run_joint_ascent(start(), x, 25, lr=0.05, record_every=10)
    assert history.steps == [0, 10, 20, 25] and len(history.log_px) == 4
    _, em_history = em.run_em(start(), x, 3)
    assert em_history.steps == [1, 2, 3]


def test_diagonal_encoder_gives_a_diagonal_covariance():
    enc = em.LinearEncoder(6, 3, diagonal=True)
    with torch.no_grad():
        enc.L_raw.copy_(torch.randn(3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0)))
    _, cov = enc(torch.zeros(2, 6, dtype=DTYPE))
    assert (cov - torch.diag(cov.diagonal())).abs().max() == 0
    torch.testing.assert_close(cov.diagonal(), (2 * enc.L_raw.diagonal()).exp())
    _, full = em.LinearEncoder(6, 3)(torch.zeros(2, 6, dtype=DTYPE))
    assert torch.equal(full, torch.eye(3, dtype=DTYPE))  # both start at q = the prior


def test_largest_column_cosine():
    W = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=DTYPE)
    assert em.largest_column_cosine(W) == pytest.approx(1 / np.sqrt(2), rel=1e-12)
    assert em.largest_column_cosine(torch.diag(torch.tensor([1.0, 3.0], dtype=DTYPE))) == 0.0


def test_a_diagonal_q_rotates_the_decoder_to_orthogonal_columns_a_full_q_does_not():
    # noisy data (noise 1.0): the posterior's correlation, and so the diagonal q's pull
    # towards orthogonal columns, is strong enough to act within 1000 steps
    x = data(n=100, d=6, k=2, noise=1.0)
    ml = LinearGaussian.from_pca(x, 2)
    angle = torch.tensor(0.6, dtype=DTYPE)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]),
                            torch.stack([angle.sin(), angle.cos()])])
    start_model = LinearGaussian(ml.W @ rotation, ml.b, ml.noise_var)
    assert em.largest_column_cosine(start_model.W) > 0.2
    target = float(ml.log_evidence(x).mean())
    settings = dict(lr=0.03, lr_end=1e-4, record_every=1000)  # only the end is asserted on
    full, _, h_full = em.run_joint_ascent(start_model, x, 1000, **settings)
    diag, enc, h_diag = em.run_joint_ascent(start_model, x, 1000, diagonal_q=True, **settings)
    assert enc.diagonal
    assert abs(h_full.log_px[-1] - target) < 1e-3 and abs(h_diag.log_px[-1] - target) < 0.01
    assert em.largest_column_cosine(diag.W) < 0.08  # the diagonal q's ELBO picked a rotation
    assert em.largest_column_cosine(full.W) > 0.4  # the full q's left it (nearly) where it was


def test_lr_end_schedule_and_its_check():
    x = data()
    optim_lrs = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        optim_lrs.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        em.run_joint_ascent(start(), x, 5, lr=0.01, lr_end=0.002)
        em.run_joint_ascent(start(), x, 3, lr=0.01)
    finally:
        torch.optim.Adam.step = original
    np.testing.assert_allclose(optim_lrs[:5], [0.01, 0.008, 0.006, 0.004, 0.002], rtol=1e-12)
    assert optim_lrs[5:] == [0.01] * 3  # by default the rate is constant
    with pytest.raises(ValueError, match="lr_end"):
        em.run_joint_ascent(start(), x, 5, lr=0.01, lr_end=0.02)

"""vaetut/prior.py: the learned prior's KL, and where its gradient goes."""
import torch

import vaetut
from vaetut.prior import GaussianPrior, term_gradient_norms


def test_the_learned_prior_kl_is_kl_to_prior_at_the_start_and_torch_distributions_elsewhere():
    gen = torch.Generator().manual_seed(0)
    q_mean, q_log_var = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    prior = GaussianPrior(3)
    torch.testing.assert_close(prior.kl(q_mean, q_log_var), vaetut.kl_to_prior(q_mean, q_log_var))
    with torch.no_grad():  # move the prior: the formula must follow it
        prior.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        prior.log_var.copy_(torch.tensor([0.3, -0.7, 1.1]))
    q = torch.distributions.Normal(q_mean, (0.5 * q_log_var).exp())
    p = torch.distributions.Normal(prior.mean, (0.5 * prior.log_var).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(prior.kl(q_mean, q_log_var), expected.detach())


def test_the_kl_term_reaches_the_prior_and_never_the_decoder():
    torch.manual_seed(0)
    model = vaetut.VAE(x_dim=16, z_dim=2, hidden=(8,))
    x = torch.rand(32, 16).round()
    prior = GaussianPrior(2)
    norms = term_gradient_norms(model, prior, x, torch.randn(1, 32, 2))
    assert norms["kl_to_prior"]["decoder"] == 0.0
    assert norms["kl_to_prior"]["prior"] > 1e-4 and norms["kl_to_prior"]["encoder"] > 1e-4
    assert norms["log_px_given_z"]["prior"] == 0.0
    assert norms["log_px_given_z"]["decoder"] > 1e-3

"""A learned prior: what changes when p(z) has parameters of its own.

With the fixed prior p(z) = N(0, I) the term KL(q_phi(z|x) || p(z)) of the ELBO holds no
generative parameter. Give the prior parameters psi, p_psi(z) = N(m, diag(exp(s))), and the
same term reaches them: its gradient then trains a part of the generative model, the prior,
but still never the decoder p_theta(x|z).
"""
from __future__ import annotations

import torch
from torch import nn

from .model import VAE
from .distributions import log_px_given_z, reparameterize
from .gradients import group_norm


class GaussianPrior(nn.Module):
    """p_psi(z) = N(mean, diag(exp(log_var))), learned; it starts as N(0, I)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(z_dim))
        self.log_var = nn.Parameter(torch.zeros(z_dim))

    def kl(self, q_mean: torch.Tensor, q_log_var: torch.Tensor) -> torch.Tensor:
        """KL(N(q_mean, diag(exp(q_log_var))) || p_psi), closed form, summed over z (B,):

        0.5 * sum_j (s_j - v_j + (exp(v_j) + (mu_j - m_j)^2) / exp(s_j) - 1), with
        v = q_log_var, m = mean, s = log_var. At m = 0, s = 0 it is `kl_to_prior`."""
        return 0.5 * (self.log_var - q_log_var
                      + (q_log_var.exp() + (q_mean - self.mean).pow(2)) / self.log_var.exp()
                      - 1.0).sum(-1)


def term_gradient_norms(model: VAE, prior: GaussianPrior, x: torch.Tensor,
                        eps: torch.Tensor) -> dict[str, dict[str, float]]:
    """The two terms of the ELBO under the learned prior, E_q[log p(x|z)] and
    KL(q(z|x) || p_psi(z)), each averaged over the batch x and differentiated on its own at
    the same noise eps (S, B, z_dim): for each term, the norm of its gradient over the
    encoder's, the decoder's and the prior's parameters."""
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, eps.shape[0], eps=eps)
    terms = {"log_px_given_z": log_px_given_z(model, x, z).mean(),
             "kl_to_prior": prior.kl(q_mean, q_log_var).mean()}
    named = {**dict(model.named_parameters()),
             **{f"prior.{n}": p for n, p in prior.named_parameters()}}
    norms: dict[str, dict[str, float]] = {}
    for i, (name, term) in enumerate(terms.items()):
        grads = dict(zip(named, torch.autograd.grad(term, list(named.values()),
                                                    retain_graph=i == 0, allow_unused=True,
                                                    materialize_grads=True)))
        norms[name] = {group: group_norm(grads, f"{group}.")
                       for group in ("encoder", "decoder", "prior")}
    return norms

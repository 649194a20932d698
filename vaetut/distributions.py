"""The distributions the ELBO is made of, each written once: the noise eps and the
reparameterized draw z ~ q(z|x), the log-densities log p(x|z), log p(z) = log N(z; 0, I) and
log q(z|x) = log N(z; q_mean, diag(exp(q_log_var))), the KL of q to the prior in closed form
(per dimension and summed), and the continuous Bernoulli density of grey levels.

All values are in nats: summed over pixels and latent dimensions, never averaged over them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def draw_eps(shape: tuple[int, ...], generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise eps ~ N(0, I) of the given shape, usually (n_samples, B, z_dim):
    the only randomness of a reparameterized draw. Drawn from `generator` (the global one
    if None)."""
    return torch.randn(shape, dtype=dtype, device=device, generator=generator)


def reparameterize(q_mean: torch.Tensor, q_log_var: torch.Tensor, n_samples: int = 1,
                   generator: torch.Generator | None = None,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = q_mean + sigma * eps with eps ~ N(0, I) and sigma = exp(q_log_var / 2).

    The randomness sits in eps alone, so z is a differentiable function of the encoder's
    outputs (the reparameterization trick). q_mean and q_log_var are (B, z_dim) (or any
    shape (..., z_dim)); eps, when given instead of drawn (by `draw_eps`), is
    (n_samples, B, z_dim). Returns z, (n_samples, B, z_dim).
    """
    if eps is None:
        eps = draw_eps((n_samples, *q_mean.shape), generator, q_mean.dtype, q_mean.device)
    elif eps.shape != (n_samples, *q_mean.shape):
        raise ValueError(f"eps must have shape {(n_samples, *q_mean.shape)}, "
                         f"got {tuple(eps.shape)}")
    return q_mean + torch.exp(0.5 * q_log_var) * eps


def kl_to_prior_per_dim(q_mean: torch.Tensor, q_log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x) || N(0, 1)) for each latent dimension j, closed form, (..., z_dim):
    0.5 (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2) (Kingma and Welling 2013, appendix B)."""
    return 0.5 * (q_log_var.exp() + q_mean.pow(2) - 1.0 - q_log_var)


def kl_to_prior(q_mean: torch.Tensor, q_log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(q_mean, diag(exp(q_log_var))) || N(0, I)), the sum over j of
    `kl_to_prior_per_dim`: the KL of each example in nats, (...,)."""
    return kl_to_prior_per_dim(q_mean, q_log_var).sum(-1)


def log_px_given_z(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p_theta(x|z) summed over pixels, (..., B), for data x (B, x_dim) and latent
    values z (..., B, z_dim) (leading sample dimensions are allowed), under the model's
    decoder and likelihood ("bernoulli" or "gaussian")."""
    params = model.decoder(z)  # (..., B, x_dim)
    if model.likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(
            params, x.expand_as(params), reduction="none").sum(-1)
    log_var = model.decoder.pixel_log_var()  # the learned log-variance, floored if asked
    return -0.5 * ((x - params).pow(2) / log_var.exp() + log_var + LOG_2PI).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def log_diag_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_var))), summed over the last dimension."""
    return -0.5 * ((z - mean).pow(2) / log_var.exp() + log_var + LOG_2PI).sum(-1)


# ----- the continuous Bernoulli (Loaiza-Ganem and Cunningham 2019) -----------------------
def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, lambda = sigmoid(logits), per element:
    C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), and C = 2 at lambda = 1/2
    (Loaiza-Ganem and Cunningham 2019, eq. 7). Near lambda = 1/2 a Taylor expansion
    (C ~ 2 + (2/3) u^2, u = 1 - 2 lambda) avoids 0/0."""
    lam = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    u = 1.0 - 2.0 * lam
    near = u.abs() < 1e-2
    safe_u = torch.where(near, torch.full_like(u, 0.5), u)
    far = torch.log(2.0 * torch.atanh(safe_u) / safe_u)
    taylor = math.log(2.0) + torch.log1p(u.pow(2) / 3.0)
    return torch.where(near, taylor, far)


def continuous_bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log CB(x; lambda) = x log lambda + (1 - x) log(1 - lambda) + log C(lambda), per
    element: the Bernoulli "log-likelihood" of a grey level x plus the normalizer that
    makes it a density on [0, 1]."""
    return (-F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
            + continuous_bernoulli_log_norm(logits))


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """The mean of CB(lambda): lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)), and
    1/2 at lambda = 1/2. It is not lambda: decoding a CB model by sigmoid(logits) is wrong."""
    lam = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    u = 1.0 - 2.0 * lam
    near = u.abs() < 1e-2
    safe_u = torch.where(near, torch.full_like(u, 0.5), u)
    far = lam / (2.0 * lam - 1.0).where(~near, torch.ones_like(u)) \
        + 1.0 / (2.0 * torch.atanh(safe_u))
    return torch.where(near, 0.5 - u / 6.0, far)

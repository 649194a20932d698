"""The objective: the ELBO and the importance-weighted bound, per example.

Notation as in the book (chapter 1):

    ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))          (eq. elbo-practical)
    IWAE_k(x) = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],  z_i ~ q   (Burda et al. 2015)

All values are in nats per example: summed over pixels and latent dimensions, never
averaged over them.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import VAE

LOG_2PI = math.log(2 * math.pi)


class ELBO(NamedTuple):
    """Per-example terms, each of shape (B,): elbo = log_px_given_z - kl_to_prior."""

    elbo: torch.Tensor
    log_px_given_z: torch.Tensor
    kl_to_prior: torch.Tensor


def reparameterize(q_mean: torch.Tensor, q_log_var: torch.Tensor, n_samples: int = 1,
                   generator: torch.Generator | None = None,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = q_mean + sigma * eps with eps ~ N(0, I) and sigma = exp(q_log_var / 2).

    The randomness sits in eps alone, so z is a differentiable function of the encoder's
    outputs (the reparameterization trick).

    Parameters
    ----------
    q_mean, q_log_var : torch.Tensor
        The encoder's mean and log-variance of q(z|x), shape (B, z_dim) each.
    n_samples : int
        Draws per example.
    generator : torch.Generator, optional
        Source of the noise (the global one if None).
    eps : torch.Tensor, optional
        Noise already drawn, shape (n_samples, B, z_dim), used instead of drawing
        (data-parallel training draws a whole batch's noise once and slices it).

    Returns
    -------
    torch.Tensor
        z, shape (n_samples, B, z_dim).
    """
    if eps is None:
        eps = torch.randn((n_samples, *q_mean.shape), dtype=q_mean.dtype, device=q_mean.device,
                          generator=generator)
    elif eps.shape != (n_samples, *q_mean.shape):
        raise ValueError(f"eps must have shape {(n_samples, *q_mean.shape)}, "
                         f"got {tuple(eps.shape)}")
    return q_mean + torch.exp(0.5 * q_log_var) * eps


def kl_to_prior(q_mean: torch.Tensor, q_log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(q_mean, diag(exp(q_log_var))) || N(0, I)), closed form, summed over z.

    0.5 * sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2): Kingma and Welling (2013),
    appendix B.

    Parameters
    ----------
    q_mean, q_log_var : torch.Tensor
        Mean and log-variance of q(z|x), shape (..., z_dim) each.

    Returns
    -------
    torch.Tensor
        The KL of each example in nats, shape (...,).
    """
    return 0.5 * (q_log_var.exp() + q_mean.pow(2) - 1.0 - q_log_var).sum(-1)


def log_px_given_z(model: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p_theta(x|z) summed over pixels.

    Parameters
    ----------
    model : VAE
        Its decoder and likelihood ("bernoulli" or "gaussian") score x.
    x : torch.Tensor
        The data, shape (B, x_dim).
    z : torch.Tensor
        Latent values, shape (..., B, z_dim): leading sample dimensions are allowed.

    Returns
    -------
    torch.Tensor
        Shape (..., B), in nats.
    """
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


def check_input(model: VAE, x: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError naming `name` unless x is a finite, non-empty (B, x_dim) float
    tensor of the model's dtype that the model's likelihood can score."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.dim() != 2 or x.shape[1] != model.x_dim:
        raise ValueError(f"{name} must have shape (batch, {model.x_dim}), got {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): it needs at least one "
                         "example")
    dtype = next(model.parameters()).dtype
    if x.dtype != dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but the model's weights are {dtype}: "
                         f"convert the data with {name}.to({dtype}) (for float32, "
                         f"{name}.float()), or the model with model.to({x.dtype})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if model.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1] for a Bernoulli likelihood, got values in "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]")


def check_count(name: str, value: int) -> None:
    """Raise ValueError naming `name` unless value is a positive int (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def elbo(model: VAE, x: torch.Tensor, n_samples: int = 1,
         generator: torch.Generator | None = None, validate: bool = True,
         eps: torch.Tensor | None = None) -> ELBO:
    """The ELBO of each example, with its two terms.

    log_px_given_z is the Monte Carlo estimate (1/S) sum_s log p(x|z_s), z_s ~ q(z|x),
    from S = n_samples reparameterized draws; kl_to_prior is exact (closed form).

    Parameters
    ----------
    model : VAE
        The encoder q(z|x) and decoder p(x|z).
    x : torch.Tensor
        The data, shape (B, x_dim), of the model's dtype.
    n_samples : int
        S, the draws z_s per example.
    generator : torch.Generator, optional
        Source of the noise (the global one if None).
    validate : bool
        Check x and n_samples first (a ValueError names what is wrong).
    eps : torch.Tensor, optional
        Standard normal noise of shape (S, B, z_dim) to use instead of drawing it.

    Returns
    -------
    ELBO
        Named tuple (elbo, log_px_given_z, kl_to_prior), each of shape (B,), in nats.
    """
    if validate:
        check_input(model, x)
        check_count("n_samples", n_samples)
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, n_samples, generator, eps)  # (S, B, z_dim)
    recon = log_px_given_z(model, x, z).mean(0)  # (B,)
    kl = kl_to_prior(q_mean, q_log_var)  # (B,)
    return ELBO(recon - kl, recon, kl)


def iwae_bound(model: VAE, x: torch.Tensor, k: int, chunk_size: int | None = None,
               generator: torch.Generator | None = None,
               max_elements: int = 2**24) -> torch.Tensor:
    """The importance-weighted bound IWAE_k(x) of each example, shape (B,).

    log (1/k) sum_i exp(log w_i), log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),
    computed with log-sum-exp. The k samples are drawn in chunks of `chunk_size`
    (by default as many as keep one chunk's decoder output under `max_elements`
    numbers), so memory does not grow with k when it is evaluated under torch.no_grad()
    (with gradients on, each chunk's graph is kept for backward, and memory grows with k
    after all). IWAE_1 is an ELBO estimate and IWAE_k
    rises towards log p(x) as k grows (Burda, Grosse and Salakhutdinov 2015).

    Parameters
    ----------
    model : VAE
        The encoder (the proposal q) and decoder.
    x : torch.Tensor
        The data, shape (B, x_dim).
    k : int
        Importance samples per example.
    chunk_size : int, optional
        Samples drawn at once (default: from `max_elements`).
    generator : torch.Generator, optional
        Source of the noise (the global one if None).
    max_elements : int
        Bound on one chunk's decoder output (chunk_size * B * x_dim numbers).

    Returns
    -------
    torch.Tensor
        IWAE_k of each example, shape (B,), in nats.
    """
    check_input(model, x)
    check_count("k", k)
    if chunk_size is None:
        chunk_size = max(1, min(k, max_elements // max(1, x.shape[0] * model.x_dim)))
    check_count("chunk_size", chunk_size)
    q_mean, q_log_var = model.encoder(x)
    chunk_lse = []
    for start in range(0, k, chunk_size):
        n = min(chunk_size, k - start)
        z = reparameterize(q_mean, q_log_var, n, generator)  # (n, B, z_dim)
        log_w = (log_px_given_z(model, x, z) + log_standard_normal(z)
                 - log_diag_normal(z, q_mean, q_log_var))  # (n, B)
        chunk_lse.append(torch.logsumexp(log_w, dim=0))
    return torch.logsumexp(torch.stack(chunk_lse), dim=0) - math.log(k)

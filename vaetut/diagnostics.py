"""Pitfalls and the measurements that diagnose them (chapter 6).

Measurements: the KL to the prior per latent dimension (`kl_per_dimension`) and the
active units of Burda, Grosse and Salakhutdinov (2015): dimension j is active when
Cov_x(E_q[z_j]) > 0.01 (`active_units`), i.e. when the encoder's mean moves with x.

Objectives usable as `vaetut.fit(..., objective=...)`; each returns a vaetut.ELBO whose
`elbo` field is the quantity maximized (the other two fields are the plain ELBO terms,
for logging):

- `BetaELBO(beta, free_bits)`: E_q[log p(x|z)] - beta * KL, with optionally the free bits
  of Kingma et al. (2016): each dimension's batch-mean KL counts as at least `free_bits`
  nats, so below that the encoder is not pushed towards the prior.
- `KLAnnealing(warmup_epochs)`: a BetaELBO whose beta rises linearly from 0 to 1 over the
  first epochs (Bowman et al. 2016); pass its `on_epoch_end` to fit.
- `pixel_mean_elbo`: the ELBO with the reconstruction term averaged over pixels instead
  of summed (what `reduction="mean"` in a loss function gives): it equals
  BetaELBO(beta=x_dim) / x_dim, a silent beta of x_dim.
- `continuous_bernoulli_elbo`: the ELBO with the continuous Bernoulli likelihood of
  Loaiza-Ganem and Cunningham (2019), a normalized density on [0, 1], for a model built
  with likelihood="bernoulli" (its decoder gives the logits).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import VAE
from .objective import ELBO, check_input, kl_to_prior, log_px_given_z, reparameterize


def _check_nonneg(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


# ----- measurements ----------------------------------------------------------------------
def kl_per_dimension_terms(q_mean: torch.Tensor, q_log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x) || N(0, 1)) for each example and dimension, (B, z_dim); summed over j
    it is `kl_to_prior`."""
    return 0.5 * (q_log_var.exp() + q_mean.pow(2) - 1.0 - q_log_var)


@torch.no_grad()
def kl_per_dimension(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """The mean over x of KL(q(z_j|x) || N(0, 1)) for each latent dimension j, (z_dim,),
    in nats. A dimension whose KL is near 0 carries no information about x."""
    check_input(model, x)
    q_mean, q_log_var = model.encoder(x)
    return kl_per_dimension_terms(q_mean, q_log_var).mean(0)


class ActiveUnits(NamedTuple):
    """count: the number of active dimensions; variance: Cov_x(E_q[z_j]) per dimension."""

    count: int
    variance: torch.Tensor


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, threshold: float = 0.01) -> ActiveUnits:
    """Dimension j is active when the variance over the examples x of the encoder's mean
    E_q[z_j] = q_mean_j(x) exceeds `threshold` (Burda et al. 2015, section 5.2)."""
    check_input(model, x)
    _check_nonneg("threshold", threshold)
    q_mean, _ = model.encoder(x)
    variance = q_mean.var(0, unbiased=False)
    return ActiveUnits(int((variance > threshold).sum()), variance)


# ----- objectives ------------------------------------------------------------------------
class BetaELBO:
    """E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), with optional free bits per dimension.

    Free bits (Kingma et al. 2016, appendix C.8): the KL of dimension j is replaced by
    max(free_bits, mean over the batch of KL_j), so a dimension whose batch-mean KL is
    below `free_bits` nats costs a constant and gets no gradient towards the prior. The
    per-example value returned keeps the batch mean equal to that objective. beta=1 and
    free_bits=0 give the ELBO. Usable as fit's objective; `beta` may be changed between
    epochs (see KLAnnealing).
    """

    def __init__(self, beta: float = 1.0, free_bits: float = 0.0):
        _check_nonneg("beta", beta)
        _check_nonneg("free_bits", free_bits)
        self.beta, self.free_bits = float(beta), float(free_bits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta:g}, free_bits={self.free_bits:g})"

    def __call__(self, model: VAE, x: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
        if validate:
            check_input(model, x)
        q_mean, q_log_var = model.encoder(x)
        z = reparameterize(q_mean, q_log_var, n_samples, generator)  # (S, B, z_dim)
        recon = log_px_given_z(model, x, z).mean(0)  # (B,)
        kl_j = kl_per_dimension_terms(q_mean, q_log_var)  # (B, z_dim)
        if self.free_bits > 0:
            below = kl_j.mean(0) < self.free_bits  # (z_dim,): these cost free_bits, no gradient
            kl_j = torch.where(below, torch.full_like(kl_j, self.free_bits), kl_j)
        penalty = kl_j.sum(-1)
        return ELBO(recon - self.beta * penalty, recon, kl_to_prior(q_mean, q_log_var))


class KLAnnealing(BetaELBO):
    """KL annealing (Bowman et al. 2016): beta = min(1, epoch / warmup_epochs), updated
    by `on_epoch_end`, so epoch e + 1 trains with beta = min(1, e / warmup_epochs) (epoch 1
    with beta = 0). Use as `fit(..., objective=a, on_epoch_end=a.on_epoch_end)`."""

    def __init__(self, warmup_epochs: int, free_bits: float = 0.0):
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) \
                or warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be a positive int, got {warmup_epochs!r}")
        super().__init__(beta=0.0, free_bits=free_bits)
        self.warmup_epochs = warmup_epochs
        self.betas: list[float] = []  # the beta each finished epoch trained with

    def on_epoch_end(self, epoch: int, model: VAE, record: dict) -> None:
        self.betas.append(self.beta)
        record["beta"] = self.beta
        self.beta = min(1.0, epoch / self.warmup_epochs)


def pixel_mean_elbo(model: VAE, x: torch.Tensor, n_samples: int = 1,
                    generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
    """The pitfall: log p(x|z) averaged over the pixels, minus the full KL. Equal to
    (E_q[log p(x|z)] - x_dim * KL) / x_dim: the KL weighted x_dim times too much.
    The `elbo` field holds that value; the other fields are the plain ELBO terms."""
    if validate:
        check_input(model, x)
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, n_samples, generator)
    recon = log_px_given_z(model, x, z).mean(0)
    kl = kl_to_prior(q_mean, q_log_var)
    return ELBO(recon / model.x_dim - kl, recon, kl)


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


def continuous_bernoulli_elbo(model: VAE, x: torch.Tensor, n_samples: int = 1,
                              generator: torch.Generator | None = None,
                              validate: bool = True) -> ELBO:
    """The ELBO with a continuous Bernoulli likelihood: a true density on [0, 1]^D, for
    grey-level pixels. The model must have likelihood="bernoulli" (its decoder's outputs
    are the logits of lambda)."""
    if validate:
        check_input(model, x)
        if model.likelihood != "bernoulli":
            raise ValueError("continuous_bernoulli_elbo needs a model with "
                             f"likelihood='bernoulli' (logits), got {model.likelihood!r}")
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, n_samples, generator)
    recon = continuous_bernoulli_log_prob(model.decoder(z), x).sum(-1).mean(0)
    kl = kl_to_prior(q_mean, q_log_var)
    return ELBO(recon - kl, recon, kl)

"""Measurements that diagnose a VAE's pitfalls (posterior collapse, a code that carries
little), each computed without changing the model.

The KL to the prior per latent dimension (`kl_per_dimension`) and the active units of
Burda, Grosse and Salakhutdinov (2015): dimension j is active when Cov_x(E_q[z_j]) > 0.01
(`active_units`), i.e. when the encoder's mean moves with x; the batch-mean KL per dimension
at every training step (`BatchKLTrace`, a recorder wrapped around fit's objective); the
rate split into the mutual information and the marginal KL (`rate_split`); and a bound in
bits per pixel (`bits_per_dim`). The objectives that cure the pitfalls (BetaELBO,
KLAnnealing, ...) live in `vaetut.objective`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import check_input, check_positive
from .distributions import (kl_to_prior, kl_to_prior_per_dim, log_diag_normal,
                            log_standard_normal, reparameterize)
from .model import VAE
from .objective import ELBO


@torch.no_grad()
def kl_per_dimension(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """The mean over x of KL(q(z_j|x) || N(0, 1)) for each latent dimension j, (z_dim,),
    in nats. A dimension whose KL is near 0 carries no information about x."""
    check_input(model, x)
    q_mean, q_log_var = model.encoder(x)
    return kl_to_prior_per_dim(q_mean, q_log_var).mean(0)


class ActiveUnits(NamedTuple):
    """count: the number of active dimensions; variance: Cov_x(E_q[z_j]) per dimension."""

    count: int
    variance: torch.Tensor


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, threshold: float = 0.01) -> ActiveUnits:
    """Dimension j is active when the variance over the examples x of the encoder's mean
    E_q[z_j] = q_mean_j(x) exceeds `threshold` (Burda et al. 2015, section 5.2)."""
    check_input(model, x)
    check_positive("threshold", threshold, allow_zero=True)
    q_mean, _ = model.encoder(x)
    variance = q_mean.var(0, unbiased=False)
    return ActiveUnits(int((variance > threshold).sum()), variance)


class BatchKLTrace:
    """An objective that records what the optimizer sees: it calls `objective` and
    appends, at each call (each training step of `fit`), the batch mean of
    KL(q(z_j|x) || p(z_j)) for each dimension j, a (z_dim,) tensor, to `self.kl`.
    The objective's value and gradient are unchanged (the record is computed without
    gradient and draws no random numbers). Use it on the CPU or with cuda_graph=False:
    a replayed CUDA graph does not call Python.

    `trace()` stacks the records into (steps, z_dim)."""

    def __init__(self, objective):
        self.objective = objective
        self.kl: list[torch.Tensor] = []

    def __call__(self, model: VAE, x: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
        out = self.objective(model, x, n_samples, generator, validate)
        with torch.no_grad():
            q_mean, q_log_var = model.encoder(x)
            self.kl.append(kl_to_prior_per_dim(q_mean, q_log_var).mean(0).cpu())
        return out

    def trace(self) -> torch.Tensor:
        """The recorded batch-mean KL per dimension, (steps, z_dim), in nats."""
        return torch.stack(self.kl)


def bits_per_dim(nats: float, x_dim: int) -> float:
    """A log-probability bound in nats per example, as bits per pixel: -nats / (D ln 2)."""
    return -nats / (x_dim * math.log(2.0))


# ----- what the code carries: rate = mutual information + marginal KL -----------------
class RateSplit(NamedTuple):
    """rate = mean over x of KL(q(z|x) || p(z)) (closed form); mutual_information =
    I_q(x; z) with x uniform over the given examples; marginal_kl = KL(q(z) || p(z)) with
    q(z) = (1/N) sum_n q(z|x_n); and mc_rate = their sum as estimated by Monte Carlo,
    which should agree with `rate` within `mc_se` (its standard error)."""

    rate: float
    mutual_information: float
    marginal_kl: float
    mc_rate: float
    mc_se: float


@torch.no_grad()
def rate_split(model: VAE, x: torch.Tensor, n_samples: int = 16,
               generator: torch.Generator | None = None) -> RateSplit:
    """Split the rate E_x KL(q(z|x) || p(z)) into I_q(x; z) + KL(q(z) || p(z)) (Hoffman and
    Johnson 2016), with x uniform over the N rows of x and z ~ q(z|x) drawn n_samples times
    per row. log q(z) = logsumexp_m log q(z|x_m) - log N is exact for this finite mixture,
    so I_q <= log N. The rate bounds the information the code carries from above
    (Alemi et al. 2018)."""
    check_input(model, x)
    q_mean, q_log_var = model.encoder(x)  # (N, K)
    z = reparameterize(q_mean, q_log_var, n_samples, generator)  # (S, N, K)
    log_q_own = log_diag_normal(z, q_mean, q_log_var)  # (S, N)
    log_q_agg = torch.stack([torch.logsumexp(
        log_diag_normal(zs[:, None, :], q_mean[None], q_log_var[None]), dim=1)
        for zs in z]) - math.log(len(x))  # (S, N): log q(z_sn) under the mixture
    log_prior = log_standard_normal(z)
    per_sample = (log_q_own - log_prior).double()  # (S, N), its mean estimates the rate
    return RateSplit(float(kl_to_prior(q_mean, q_log_var).mean()),
                     float((log_q_own - log_q_agg).double().mean()),
                     float((log_q_agg - log_prior).double().mean()),
                     float(per_sample.mean()),
                     float(per_sample.std() / per_sample.numel() ** 0.5))

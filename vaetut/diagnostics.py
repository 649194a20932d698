"""Pitfalls and the measurements that diagnose them (chapter 6).

Measurements: the KL to the prior per latent dimension (`kl_per_dimension`) and the
active units of Burda, Grosse and Salakhutdinov (2015): dimension j is active when
Cov_x(E_q[z_j]) > 0.01 (`active_units`), i.e. when the encoder's mean moves with x; and
the batch-mean KL per dimension at every training step (`BatchKLTrace`).

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
            self.kl.append(kl_per_dimension_terms(q_mean, q_log_var).mean(0).cpu())
        return out

    def trace(self) -> torch.Tensor:
        """The recorded batch-mean KL per dimension, (steps, z_dim), in nats."""
        return torch.stack(self.kl)


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


# ----- a constant factor on the loss ----------------------------------------------------
class Scaled:
    """`factor` times another objective (all three fields scaled): the same optimum, and
    with Adam almost the same run, since Adam divides each step by a running root mean
    square of the gradient, in which a constant factor cancels (up to Adam's eps).
    Contrast with pixel_mean_elbo, which scales one term only."""

    def __init__(self, objective, factor: float):
        _check_nonneg("factor", factor)
        if factor == 0:
            raise ValueError("factor must be > 0")
        self.objective, self.factor = objective, float(factor)

    def __call__(self, model: VAE, x: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
        out = self.objective(model, x, n_samples, generator, validate)
        return ELBO(*(self.factor * t for t in out))


# ----- densities on discrete grey levels ------------------------------------------------
def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Uniform dequantization (Theis, van den Oord and Bethge 2016): x holds grey levels
    k / (levels - 1), k = 0, ..., levels - 1; returns (k + u) / levels with u ~ U(0, 1)
    per pixel, a point spread uniformly over the k-th of `levels` equal bins of [0, 1]."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    k = torch.round(x * (levels - 1))
    if (k - x * (levels - 1)).abs().max() > 1e-4:
        raise ValueError(f"x must hold the grey levels k / {levels - 1}")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (k + u) / levels


class Dequantized:
    """An objective for a density model of discrete grey levels: dequantize the batch
    with fresh uniform noise (drawn from the generator), apply `objective` (an ELBO of a
    density on [0, 1]^D), and subtract D log(levels). In expectation over the noise the
    result is a lower bound on log P(k), where P(k) = integral of the model's density over
    the bin of k: log P(k) = -D log L + log E_u p(y) >= -D log L + E_u[ELBO(y)] (Jensen).
    So it is <= 0 and cannot grow without bound, unlike a density evaluated on the grid
    points themselves. All three fields are shifted/kept so that elbo = recon - kl."""

    def __init__(self, objective, levels: int):
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        self.objective, self.levels = objective, levels

    def __call__(self, model: VAE, x: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
        y = dequantize(x, self.levels, generator)
        out = self.objective(model, y, n_samples, generator, validate)
        shift = x.shape[-1] * math.log(self.levels)
        return ELBO(out.elbo - shift, out.log_px_given_z - shift, out.kl_to_prior)


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
    log_q_own = -0.5 * ((z - q_mean).pow(2) / q_log_var.exp() + q_log_var
                        + math.log(2 * math.pi)).sum(-1)  # (S, N)
    log_q_agg = torch.stack([torch.logsumexp(
        -0.5 * ((zs[:, None, :] - q_mean[None]).pow(2) / q_log_var.exp()[None]
                + q_log_var[None] + math.log(2 * math.pi)).sum(-1), dim=1)
        for zs in z]) - math.log(len(x))  # (S, N): log q(z_sn) under the mixture
    log_prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    per_sample = (log_q_own - log_prior).double()  # (S, N), its mean estimates the rate
    return RateSplit(float(kl_to_prior(q_mean, q_log_var).mean()),
                     float((log_q_own - log_q_agg).double().mean()),
                     float((log_q_agg - log_prior).double().mean()),
                     float(per_sample.mean()),
                     float(per_sample.std() / per_sample.numel() ** 0.5))

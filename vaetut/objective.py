"""Every objective `vaetut.fit(..., objective=...)` can take, each per example:

    ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))          (eq. elbo-practical)

- `elbo`: the ELBO (Kingma and Welling 2013); with `eps` it uses given noise, with
  `detach_z` the decoder sees z as a constant. Every variant below calls it or its parts.
- `elbo_z_detached`, `elbo_without_kl`: the ELBO with one path of its graph cut (the
  reconstruction term's path to the encoder; the KL's gradient).
- `elbo_mc_kl`: the KL estimated by Monte Carlo, optionally "sticking the landing"
  (Roeder, Wu and Duvenaud 2017).
- `iwae_objective`: the importance-weighted bound IWAE_k (Burda, Grosse and Salakhutdinov
  2015), from `iwae_log_weights`, the log-weights that `bounds.iwae_bound` uses too.
- `BetaELBO` (beta and free bits), `KLAnnealing`, `pixel_mean_elbo` (the silent beta of an
  averaged reconstruction), `continuous_bernoulli_elbo` (a density on [0, 1]).
- Wrappers: `Scaled` (a constant factor) and `Dequantized` (discrete grey levels).

Each returns an `ELBO` tuple (objective value, log_px_given_z, kl_to_prior). All values are
in nats per example: summed over pixels and latent dimensions, never averaged over them.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import check_count, check_input, check_positive
from .distributions import (continuous_bernoulli_log_prob, kl_to_prior, kl_to_prior_per_dim,
                            log_diag_normal, log_px_given_z, log_standard_normal,
                            reparameterize)
from .model import VAE


class ELBO(NamedTuple):
    """Per-example terms, each of shape (B,), what every objective returns.

    `elbo` is the value the objective maximizes (fit's loss is minus its batch mean): for
    `elbo` itself the ELBO, log_px_given_z - kl_to_prior; for a variant its own value
    (IWAE_k, the beta-weighted ELBO, ...), as the variant's docstring says, so then
    elbo != log_px_given_z - kl_to_prior. `log_px_given_z` (the Monte Carlo mean of
    log p(x|z)) and `kl_to_prior` are always the plain ELBO's two terms, for logging."""

    elbo: torch.Tensor
    log_px_given_z: torch.Tensor
    kl_to_prior: torch.Tensor


def elbo(model: VAE, x: torch.Tensor, n_samples: int = 1,
         generator: torch.Generator | None = None, validate: bool = True,
         eps: torch.Tensor | None = None, detach_z: bool = False) -> ELBO:
    """The ELBO of each example (B,), with its two terms, for data x (B, x_dim).

    log_px_given_z is the Monte Carlo estimate (1/S) sum_s log p(x|z_s), z_s ~ q(z|x),
    from S = n_samples reparameterized draws (at the noise `eps` (S, B, z_dim) if given,
    else drawn from `generator`); kl_to_prior is exact (closed form). With detach_z the
    decoder sees z as a constant, so no gradient flows from the reconstruction term back
    into the encoder. `validate` checks x and n_samples first.
    """
    if validate:
        check_input(model, x)
        check_count("n_samples", n_samples)
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, n_samples, generator, eps)  # (S, B, z_dim)
    if detach_z:
        z = z.detach()
    recon = log_px_given_z(model, x, z).mean(0)  # (B,)
    kl = kl_to_prior(q_mean, q_log_var)  # (B,)
    return ELBO(recon - kl, recon, kl)


# ----- the ELBO with one path cut -------------------------------------------------------
def elbo_z_detached(model: VAE, x: torch.Tensor, n_samples: int = 1,
                    generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
    """The ELBO, with z detached before the decoder: `elbo(..., detach_z=True)`.

    Its value is the ELBO; its gradient reaches the encoder only through the KL term,
    because the reconstruction term's only path to phi runs through z.
    """
    return elbo(model, x, n_samples, generator, validate, detach_z=True)


def elbo_without_kl(model: VAE, x: torch.Tensor, n_samples: int = 1,
                    generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
    """The ELBO whose KL term carries no gradient.

    Its value is still the ELBO (so learning curves compare with the full objective's),
    but the gradient is that of the reconstruction term alone: an autoencoder with noise.
    """
    terms = elbo(model, x, n_samples, generator, validate)
    return ELBO(terms.log_px_given_z - terms.kl_to_prior.detach(), terms.log_px_given_z,
                terms.kl_to_prior)


def elbo_mc_kl(model: VAE, x: torch.Tensor, n_samples: int = 1,
               generator: torch.Generator | None = None, validate: bool = True,
               eps: torch.Tensor | None = None, stick_the_landing: bool = False) -> ELBO:
    """The ELBO with the KL to the prior estimated by Monte Carlo (at the noise eps
    (S, B, z_dim) if given):

        ELBO_hat = (1/S) sum_s [ log p(x|z_s) + log p(z_s) - log q_phi(z_s|x) ],
        z_s = mu_phi(x) + sigma_phi(x) * eps_s,

    per example (B,). Its gradient in phi has three parts: the path through z in
    log p(x, z), the path through z in -log q, and the score term
    -grad_phi log q_phi(z|x) with z held fixed, whose expectation under q is zero.
    stick_the_landing drops the score term, by evaluating log q with detached copies of
    mu and log sigma^2 (z itself is not detached): the "sticking the landing" estimator,
    unbiased for the same gradient, and exactly zero for every eps when q is the exact
    posterior, since then log p(x, z) - log q(z|x) = log p(x) does not depend on z.
    The value is the same either way.
    """
    if validate:
        check_input(model, x)
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, n_samples, generator, eps)  # (S, B, z_dim)
    q_params = (q_mean.detach(), q_log_var.detach()) if stick_the_landing else (q_mean, q_log_var)
    recon = log_px_given_z(model, x, z).mean(0)  # (B,)
    kl = (log_diag_normal(z, *q_params) - log_standard_normal(z)).mean(0)  # (B,)
    return ELBO(recon - kl, recon, kl)


# ----- the importance-weighted bound ------------------------------------------------------
def iwae_log_weights(model: VAE, x: torch.Tensor, z: torch.Tensor, q_mean: torch.Tensor,
                     q_log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) at the draws z (k, B, z_dim)
    from q = N(q_mean, diag(exp(q_log_var))); returns (log w, log p(x|z_i)), each (k, B).
    IWAE_k(x) = log (1/k) sum_i w_i (Burda, Grosse and Salakhutdinov 2015)."""
    log_px_z = log_px_given_z(model, x, z)  # (k, B)
    return log_px_z + log_standard_normal(z) - log_diag_normal(z, q_mean, q_log_var), log_px_z


def iwae_objective(model: VAE, x: torch.Tensor, n_samples: int = 1,
                   generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
    """The IWAE bound with k = n_samples, usable as `fit(..., objective=iwae_objective,
    n_samples=k)`.

    Returns vaetut.ELBO(iwae, log_px_given_z, kl_to_prior) per example: the `elbo` field
    holds IWAE_k(x), the quantity fit maximizes; the other two fields are the usual ELBO
    terms (the mean over the k samples of log p(x|z_i), and the closed-form KL), for
    logging only. So, unlike for `vaetut.elbo`, elbo != log_px_given_z - kl_to_prior
    (for k = 1 the two agree in expectation). Gradients flow through the reparameterized
    samples into the encoder and the decoder.
    """
    if validate:
        check_input(model, x)
        check_count("n_samples", n_samples)
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, n_samples, generator)  # (k, B, z_dim)
    log_w, log_px_z = iwae_log_weights(model, x, z, q_mean, q_log_var)  # (k, B) each
    iwae = torch.logsumexp(log_w, 0) - math.log(n_samples)  # (B,)
    return ELBO(iwae, log_px_z.mean(0), kl_to_prior(q_mean, q_log_var))


# ----- a weighted KL ----------------------------------------------------------------------
class BetaELBO:
    """E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), with optional free bits per dimension.

    Free bits (Kingma et al. 2016, appendix C.8): the KL of dimension j is replaced by
    max(free_bits, mean over the batch of KL_j), so a dimension whose batch-mean KL is
    below `free_bits` nats costs a constant and gets no gradient towards the prior. The
    per-example value returned keeps the batch mean equal to that objective. beta=1 and
    free_bits=0 give the ELBO. Usable as fit's objective; `beta` may be changed between
    epochs (see KLAnnealing). The `elbo` field of what it returns holds this objective.
    """

    def __init__(self, beta: float = 1.0, free_bits: float = 0.0):
        check_positive("beta", beta, allow_zero=True)
        check_positive("free_bits", free_bits, allow_zero=True)
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
        kl_j = kl_to_prior_per_dim(q_mean, q_log_var)  # (B, z_dim)
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
        check_count("warmup_epochs", warmup_epochs)
        super().__init__(beta=0.0, free_bits=free_bits)
        self.warmup_epochs = warmup_epochs
        self.betas: list[float] = []  # the beta each finished epoch trained with

    def on_epoch_end(self, epoch: int, model: VAE, record: dict) -> None:
        self.betas.append(self.beta)
        record["beta"] = self.beta
        self.beta = min(1.0, epoch / self.warmup_epochs)

    def state_dict(self) -> dict:
        """The schedule's progress, which a checkpoint of `fit` saves (warmup_epochs and
        free_bits are its parameters: they define the run)."""
        return {"beta": self.beta, "betas": list(self.betas)}

    def load_state_dict(self, state: dict) -> None:
        """Take back the progress `state_dict` returned; ValueError for anything else."""
        values = [state.get("beta"), *state.get("betas", [None])] \
            if isinstance(state, dict) and isinstance(state.get("betas"), list) else [None]
        if not all(isinstance(b, float) and 0.0 <= b <= 1.0 for b in values) \
                or set(state) != {"beta", "betas"}:
            raise ValueError(f"not a KLAnnealing state (beta and betas in [0, 1]): {state!r}")
        self.beta, self.betas = state["beta"], list(state["betas"])


def pixel_mean_elbo(model: VAE, x: torch.Tensor, n_samples: int = 1,
                    generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
    """The pitfall: log p(x|z) averaged over the pixels, minus the full KL. Equal to
    (E_q[log p(x|z)] - x_dim * KL) / x_dim: the KL weighted x_dim times too much.
    The `elbo` field holds that value; the other fields are the plain ELBO terms."""
    terms = elbo(model, x, n_samples, generator, validate)
    return ELBO(terms.log_px_given_z / model.x_dim - terms.kl_to_prior, terms.log_px_given_z,
                terms.kl_to_prior)


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


# ----- wrappers: a constant factor, discrete grey levels ----------------------------------
class Scaled:
    """`factor` times another objective (all three fields scaled): the same optimum, and
    with Adam almost the same run, since Adam divides each step by a running root mean
    square of the gradient, in which a constant factor cancels (up to Adam's eps).
    Contrast with pixel_mean_elbo, which scales one term only."""

    def __init__(self, objective, factor: float):
        check_positive("factor", factor)
        self.objective, self.factor = objective, float(factor)

    def __call__(self, model: VAE, x: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
        out = self.objective(model, x, n_samples, generator, validate)
        return ELBO(*(self.factor * t for t in out))


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Uniform dequantization (Theis, van den Oord and Bethge 2016): x holds grey levels
    k / (levels - 1), k = 0, ..., levels - 1; returns (k + u) / levels with u ~ U(0, 1)
    per pixel, a point spread uniformly over the k-th of `levels` equal bins of [0, 1]."""
    _check_levels(levels)
    k = torch.round(x * (levels - 1))
    if (k - x * (levels - 1)).abs().max() > 1e-4:
        raise ValueError(f"x must hold the grey levels k / {levels - 1}")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (k + u) / levels


def _check_levels(levels: int) -> None:
    check_count("levels", levels)
    if levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")


class Dequantized:
    """An objective for a density model of discrete grey levels: dequantize the batch
    with fresh uniform noise (drawn from the generator), apply `objective` (an ELBO of a
    density on [0, 1]^D), and subtract D log(levels). In expectation over the noise the
    result is a lower bound on log P(k), where P(k) = integral of the model's density over
    the bin of k: log P(k) = -D log L + log E_u p(y) >= -D log L + E_u[ELBO(y)] (Jensen).
    So it is <= 0 and cannot grow without bound, unlike a density evaluated on the grid
    points themselves. All three fields are shifted/kept so that elbo = recon - kl."""

    def __init__(self, objective, levels: int):
        _check_levels(levels)
        self.objective, self.levels = objective, levels

    def __call__(self, model: VAE, x: torch.Tensor, n_samples: int = 1,
                 generator: torch.Generator | None = None, validate: bool = True) -> ELBO:
        y = dequantize(x, self.levels, generator)
        out = self.objective(model, y, n_samples, generator, validate)
        shift = x.shape[-1] * math.log(self.levels)
        return ELBO(out.elbo - shift, out.log_px_given_z - shift, out.kl_to_prior)

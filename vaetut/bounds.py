"""Tighter bounds and the inference gap (chapter 5).

The importance-weighted bound of Burda, Grosse and Salakhutdinov (2015),

    IWAE_k(x) = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],   z_i ~ q(z|x),

is an ELBO for k = 1 and rises towards log p(x) as k grows. Here it is computed for an
explicit Gaussian q on the exact linear-Gaussian model (`iwae_exact`), and used as a
training objective for a VAE (`iwae_objective`, for `vaetut.fit(..., objective=...)`).

The inference gap log p(x) - ELBO(encoder's q) splits into two parts (Cremer, Li and
Duvenaud 2018):

    approximation gap = log p(x) - ELBO(q*)   q* the best *diagonal* Gaussian q for this x
    amortization gap  = ELBO(q*) - ELBO(encoder's q)

(the encoder's q is a diagonal Gaussian too, so the amortization gap is >= 0 and the
approximation gap is the price of the diagonal family). `optimize_q` finds q* per example
by gradient ascent on the ELBO, starting from the encoder's output, with the decoder held
fixed. `iwae_gradient_draws` and `signal_to_noise` measure how noisy the IWAE gradient
is for the encoder and the decoder (Rainforth et al. 2018; Tucker et al. 2019).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .exact import DTYPE, LinearGaussian, sample_q
from .model import VAE
from .objective import (ELBO, check_count, check_input, kl_to_prior, log_diag_normal,
                        log_px_given_z, log_standard_normal, reparameterize)


# ----- IWAE on the exact model ---------------------------------------------------------
def iwae_exact(model: LinearGaussian, x, q_mean, q_cov, k: int,
               generator: torch.Generator | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """IWAE_k(x) for the Gaussian proposal q(z|x) = N(q_mean, q_cov) on probabilistic PCA,
    per example (N,), in float64.

    log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) with z_i ~ q; the k weights are
    drawn in chunks and combined with log-sum-exp. With q the exact posterior every
    log w_i equals log p(x) and IWAE_k = log p(x) for every k.
    """
    check_count("k", k)
    check_count("chunk_size", chunk_size)
    x, q_mean, q_cov, chol = model._check_q(x, q_mean, q_cov)
    q = torch.distributions.MultivariateNormal(q_mean, scale_tril=chol.expand(
        len(q_mean), model.z_dim, model.z_dim))
    lse = []
    for start in range(0, k, chunk_size):
        n = min(chunk_size, k - start)
        z = sample_q(q_mean, q_cov, n, generator)  # (n, N, K)
        log_w = model.log_px_given_z(x, z) + model.log_prior(z) - q.log_prob(z)  # (n, N)
        lse.append(torch.logsumexp(log_w, 0))
    return torch.logsumexp(torch.stack(lse), 0) - math.log(k)


def best_diagonal_q(model: LinearGaussian, x) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal Gaussian q closest to the exact posterior N(mu, Sigma) in
    KL(q || p(z|x)): mean mu and variances 1 / diag(Sigma^{-1}) (Bishop 2006, 10.1.2).
    Returns (q_mean (N, K), q_cov (K, K) diagonal)."""
    mu, sigma = model.posterior(x)
    return mu, torch.diag(1.0 / torch.linalg.inv(sigma).diagonal())


# ----- IWAE as a training objective ----------------------------------------------------
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
    log_px_z = log_px_given_z(model, x, z)  # (k, B)
    log_w = log_px_z + log_standard_normal(z) - log_diag_normal(z, q_mean, q_log_var)
    iwae = torch.logsumexp(log_w, 0) - math.log(n_samples)  # (B,)
    return ELBO(iwae, log_px_z.mean(0), kl_to_prior(q_mean, q_log_var))


# ----- the ELBO of an explicit q, and the best q per example --------------------------
def draw_noise(n_samples: int, batch_size: int, z_dim: int,
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A bank of standard normal noise eps, (n_samples, batch_size, z_dim)."""
    return torch.randn(n_samples, batch_size, z_dim, generator=generator, dtype=dtype)


def elbo_of_q(model: VAE | LinearGaussian, x: torch.Tensor, q_mean: torch.Tensor,
              q_log_var: torch.Tensor, eps: torch.Tensor) -> ELBO:
    """The ELBO of each example under q(z|x) = N(q_mean, diag(exp(q_log_var))), estimated
    at the given noise eps (S, B, z_dim): z = q_mean + exp(q_log_var / 2) * eps,
    log_px_given_z averaged over the S draws, kl_to_prior in closed form (as `vaetut.elbo`
    does for the encoder's q). The model is a VAE (its decoder) or a LinearGaussian.
    Using the same eps for two q's compares them with common random numbers."""
    z = q_mean + torch.exp(0.5 * q_log_var) * eps  # (S, B, z_dim)
    if isinstance(model, LinearGaussian):
        recon = model.log_px_given_z(x, z).mean(0)
    else:
        recon = log_px_given_z(model, x, z).mean(0)
    kl = kl_to_prior(q_mean, q_log_var)
    return ELBO(recon - kl, recon, kl)


class OptimizedQ(NamedTuple):
    """The result of `optimize_q`, per example: the optimized q's mean and log-variance
    (B, z_dim), its ELBO and the starting q's ELBO (B,), both estimated on the same fixed
    noise bank that the optimization used."""

    q_mean: torch.Tensor
    q_log_var: torch.Tensor
    elbo: torch.Tensor
    elbo_start: torch.Tensor


def optimize_q(model: VAE | LinearGaussian, x: torch.Tensor, steps: int = 300,
               lr: float = 0.05, n_samples: int = 64,
               generator: torch.Generator | None = None,
               init: tuple[torch.Tensor, torch.Tensor] | None = None) -> OptimizedQ:
    """Fit a separate diagonal Gaussian q(z|x_b) = N(m_b, diag(exp(v_b))) to each example
    x_b by Adam ascent on its ELBO, with the model's parameters held fixed.

    The start is `init` = (q_mean, q_log_var), by default the encoder's output for a VAE
    (the amortized q) and the prior N(0, I) for a LinearGaussian. The ELBO is estimated
    with one fixed bank of `n_samples` noise draws per example (drawn once from
    `generator`), so the objective is a deterministic function of (m, v) and the returned
    `elbo` and `elbo_start` are comparable; with many samples the bank's optimum is close
    to the true one (check it on a fresh bank). The examples do not interact: the sum of
    their ELBOs is maximized, and each term depends only on its own (m_b, v_b).
    """
    check_count("steps", steps)
    check_count("n_samples", n_samples)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    exact = isinstance(model, LinearGaussian)
    if exact:
        x = x.to(DTYPE)
    elif isinstance(model, VAE):
        check_input(model, x)
    else:
        raise ValueError(f"model must be a VAE or a LinearGaussian, got {type(model).__name__}")
    dtype = DTYPE if exact else x.dtype
    if init is None:
        if exact:
            zeros = torch.zeros(len(x), model.z_dim, dtype=DTYPE)
            init = (zeros, zeros)
        else:
            with torch.no_grad():
                init = model.encoder(x)
    m = init[0].detach().to(dtype).clone().requires_grad_(True)
    v = init[1].detach().to(dtype).clone().requires_grad_(True)
    eps = draw_noise(n_samples, len(x), model.z_dim, generator, dtype).to(x.device)
    with torch.no_grad():
        elbo_start = elbo_of_q(model, x, m, v, eps).elbo
    optimizer = torch.optim.Adam([m, v], lr=lr)
    for _ in range(steps):
        loss = -elbo_of_q(model, x, m, v, eps).elbo.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=[m, v])  # the model's parameters get no gradient
        optimizer.step()
    with torch.no_grad():
        final = elbo_of_q(model, x, m, v, eps).elbo
    return OptimizedQ(m.detach(), v.detach(), final, elbo_start)


# ----- the gradient's signal-to-noise ratio (Rainforth et al. 2018) ------------------
ESTIMATORS = ("iwae", "dreg")


class GradientDraws(NamedTuple):
    """Independent draws of a stochastic gradient, one row per draw: `encoder` (n_draws,
    number of encoder parameters) and `decoder` (n_draws, number of decoder parameters),
    each parameter tensor flattened in `model.encoder.parameters()` order (resp. decoder)."""

    encoder: torch.Tensor
    decoder: torch.Tensor


def iwae_gradient_draws(model: VAE, x: torch.Tensor, k: int, n_draws: int,
                        estimator: str = "iwae",
                        generator: torch.Generator | None = None) -> GradientDraws:
    """`n_draws` independent estimates of the gradient of the batch mean of IWAE_k(x)
    with respect to the encoder's parameters phi and the decoder's theta, each from k
    fresh reparameterized draws z_i = mu_phi(x) + sigma_phi(x) * eps_i per example.

    With log w_i = log p_theta(x, z_i) - log q_phi(z_i|x) and normalized weights
    w~_i = w_i / sum_j w_j, the two estimators of the encoder's gradient are

        "iwae":  sum_i w~_i   d/dphi log w_i(z_i(phi), phi)        (what fit differentiates)
        "dreg":  sum_i w~_i^2 (d log w_i / d z_i) (d z_i / d phi)   (Tucker et al. 2019)

    "dreg", the doubly reparameterized estimator, drops the score term d/dphi log q_phi(z)
    at fixed z (zero mean) and reweights the remaining path term; it has the same
    expectation. The decoder's gradient is sum_i w~_i d/dtheta log p_theta(x, z_i) for both.
    The model's .grad fields are not touched.
    """
    check_input(model, x)
    check_count("k", k)
    check_count("n_draws", n_draws)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    enc_params = list(model.encoder.parameters())
    dec_params = list(model.decoder.parameters())
    enc_rows, dec_rows = [], []
    for _ in range(n_draws):
        q_mean, q_log_var = model.encoder(x)
        z = reparameterize(q_mean, q_log_var, k, generator)  # (k, B, z_dim)
        log_joint = log_px_given_z(model, x, z) + log_standard_normal(z)
        if estimator == "iwae":
            log_w = log_joint - log_diag_normal(z, q_mean, q_log_var)
            iwae = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
            grads = torch.autograd.grad(iwae, enc_params + dec_params)
            g_enc, g_dec = grads[:len(enc_params)], grads[len(enc_params):]
        else:
            # q's parameters enter log w only through z: the score term is cut
            log_w = log_joint - log_diag_normal(z, q_mean.detach(), q_log_var.detach())
            w_norm = torch.softmax(log_w, 0).detach()
            surrogate = (w_norm.pow(2) * log_w).sum(0).mean()
            iwae = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
            g_enc = torch.autograd.grad(surrogate, enc_params, retain_graph=True)
            g_dec = torch.autograd.grad(iwae, dec_params)
        enc_rows.append(torch.cat([g.reshape(-1) for g in g_enc]))
        dec_rows.append(torch.cat([g.reshape(-1) for g in g_dec]))
    return GradientDraws(torch.stack(enc_rows), torch.stack(dec_rows))


def signal_to_noise(draws: torch.Tensor) -> torch.Tensor:
    """Per-parameter signal-to-noise ratio of a stochastic gradient from its draws
    (n_draws, P): ``SNR_j = abs(mean_s g_sj) / sd_s(g_sj)`` (Rainforth et al. 2018), with
    the unbiased standard deviation. With n draws of a gradient whose true mean is zero
    the estimate is still about 0.8 / sqrt(n) (the noise in the mean), so only SNRs well
    above that are measured. A parameter whose draws are all equal (the gradient of a
    dead ReLU unit is exactly 0) has no SNR: nan, which `torch.nanmedian` skips."""
    if draws.dim() != 2 or len(draws) < 2:
        raise ValueError(f"draws must have shape (n_draws >= 2, P), got {tuple(draws.shape)}")
    sd = draws.std(0)
    return torch.where(sd > 0, draws.mean(0).abs() / sd, torch.nan)

"""Tighter bounds and the inference gap.

The importance-weighted bound of Burda, Grosse and Salakhutdinov (2015),

    IWAE_k(x) = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],   z_i ~ q(z|x),

is an ELBO for k = 1 and rises towards log p(x) as k grows. Here it is evaluated for a VAE
(`iwae_bound`, in chunks, from the log-weights `objective.iwae_log_weights` that the
training objective `objective.iwae_objective` uses too) and for an explicit Gaussian q on
the exact linear-Gaussian model (`iwae_exact`).

The inference gap log p(x) - ELBO(encoder's q) splits into two parts (Cremer, Li and
Duvenaud 2018):

    approximation gap = log p(x) - ELBO(q*)   q* the best *diagonal* Gaussian q for this x
    amortization gap  = ELBO(q*) - ELBO(encoder's q)

(the encoder's q is a diagonal Gaussian too, so the amortization gap is >= 0 and the
approximation gap is the price of the diagonal family). `optimize_q` finds q* per example
by gradient ascent on the ELBO, starting from the encoder's output, with the decoder held
fixed; `diagonal_q_optima` gives the diagonal q that KL(q || p) and KL(p || q) pick for a
Gaussian posterior. Averaged over a data distribution, the ELBO is minus a KL between joint
distributions over (x, z), less the data's entropy (`joint_kl_identity`).
`iwae_gradient_draws` and `signal_to_noise` measure how noisy the IWAE gradient is for the
encoder and the decoder (Rainforth et al. 2018; Tucker et al. 2019).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import check_count, check_input, check_positive
from .distributions import draw_eps, kl_to_prior, log_px_given_z, reparameterize
from .exact import (DTYPE, LinearGaussian, data_encoder_joint, gaussian_entropy, gaussian_kl,
                    sample_q, sigma_points)
from .model import VAE
from .objective import ELBO, iwae_log_weights


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
    return mu, torch.diag(diagonal_q_optima(sigma)[0])


def diagonal_q_optima(post_cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a Gaussian posterior N(mu, Sigma) and a diagonal Gaussian q = N(mu, diag v):
    the v that minimizes KL(q || p) (what the ELBO does) is 1 / diag(Sigma^{-1}); the v that
    minimizes KL(p || q) (what wake-sleep's sleep phase does) is diag(Sigma). Returns both,
    (K,) each; they agree only when Sigma is diagonal."""
    post_cov = post_cov.detach().to(DTYPE)
    return 1.0 / torch.linalg.inv(post_cov).diagonal(), post_cov.diagonal().clone()


# ----- IWAE of a VAE -------------------------------------------------------------------
def iwae_bound(model: VAE, x: torch.Tensor, k: int, chunk_size: int | None = None,
               generator: torch.Generator | None = None,
               max_elements: int = 2**24) -> torch.Tensor:
    """The importance-weighted bound IWAE_k(x) of each example (B,), for data x (B, x_dim).

    log (1/k) sum_i exp(log w_i), log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)
    (`iwae_log_weights`), computed with log-sum-exp. The k samples are drawn in chunks of
    `chunk_size` (by default as many as keep one chunk's decoder output, chunk_size * B *
    x_dim numbers, under `max_elements`), so memory does not grow with k when it is
    evaluated under torch.no_grad() (with gradients on, each chunk's graph is kept for
    backward, and memory grows with k after all). IWAE_1 is an ELBO estimate and IWAE_k
    rises towards log p(x) as k grows (Burda, Grosse and Salakhutdinov 2015).
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
        log_w, _ = iwae_log_weights(model, x, z, q_mean, q_log_var)  # (n, B)
        chunk_lse.append(torch.logsumexp(log_w, dim=0))
    return torch.logsumexp(torch.stack(chunk_lse), dim=0) - math.log(k)


# ----- the ELBO of an explicit q, and the best q per example --------------------------
def elbo_of_q(model: VAE | LinearGaussian, x: torch.Tensor, q_mean: torch.Tensor,
              q_log_var: torch.Tensor, eps: torch.Tensor) -> ELBO:
    """The ELBO of each example under q(z|x) = N(q_mean, diag(exp(q_log_var))), estimated
    at the given noise eps (S, B, z_dim): z = q_mean + exp(q_log_var / 2) * eps,
    log_px_given_z averaged over the S draws, kl_to_prior in closed form (as `vaetut.elbo`
    does for the encoder's q). The model is a VAE (its decoder) or a LinearGaussian.
    Using the same eps for two q's compares them with common random numbers."""
    z = reparameterize(q_mean, q_log_var, len(eps), eps=eps)  # (S, B, z_dim)
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
    check_positive("lr", lr)
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
    eps = draw_eps((n_samples, len(x), model.z_dim), generator, dtype).to(x.device)
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


# ----- the ELBO averaged over the data: the joint-KL identity -----------------------------

class JointKL(NamedTuple):
    """The two sides of E_{p_D}[ELBO] = -KL(p_D(x) q(z|x) || p_theta(x, z)) - H(p_D) and the
    split of that KL, in nats: expected_elbo and expected_gap (E_{p_D} of the per-x ELBO and
    of KL(q(z|x) || p_theta(z|x))), joint_kl, data_entropy = H(p_D) and marginal_kl =
    KL(p_D(x) || p_theta(x))."""

    expected_elbo: float
    joint_kl: float
    data_entropy: float
    marginal_kl: float
    expected_gap: float


def joint_kl_identity(model: LinearGaussian, data_mean: torch.Tensor, data_cov: torch.Tensor,
                      A: torch.Tensor, c: torch.Tensor, q_cov: torch.Tensor) -> JointKL:
    """Both sides of the joint-KL identity for a Gaussian data distribution
    p_D = N(data_mean, data_cov) and a linear encoder q(z|x) = N(A x + c, q_cov), computed
    independently:

    * E_{p_D}[ELBO(x)] and E_{p_D}[KL(q(z|x) || p_theta(z|x))] from the per-x closed forms
      (LinearGaussian.elbo, kl_to_posterior) averaged over the sigma points of p_D: both are
      quadratic in x here, so that average is the exact expectation;
    * KL(p_D q || p_theta(x, z)) and KL(p_D || p_theta(x)) as KLs between Gaussians over
      (x, z) and over x (gaussian_kl), and H(p_D) (gaussian_entropy).

    The identity says expected_elbo = -joint_kl - data_entropy, and the chain rule of the KL
    joint_kl = marginal_kl + expected_gap."""
    points = sigma_points(data_mean, data_cov)
    q_mean = points @ A.T + c
    with torch.no_grad():
        expected_elbo = model.elbo(points, q_mean, q_cov).mean()
        expected_gap = model.kl_to_posterior(points, q_mean, q_cov).mean()
        joint_kl = gaussian_kl(*data_encoder_joint(data_mean, data_cov, A, c, q_cov),
                               *model.joint())
        marginal_kl = gaussian_kl(data_mean, data_cov, model.b, model.marginal_cov())
        entropy = gaussian_entropy(data_cov)
    return JointKL(float(expected_elbo), float(joint_kl), float(entropy), float(marginal_kl),
                   float(expected_gap))


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
        if estimator == "iwae":
            log_w, _ = iwae_log_weights(model, x, z, q_mean, q_log_var)
            iwae = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
            grads = torch.autograd.grad(iwae, enc_params + dec_params)
            g_enc, g_dec = grads[:len(enc_params)], grads[len(enc_params):]
        else:
            # q's parameters enter log w only through z: the score term is cut
            log_w, _ = iwae_log_weights(model, x, z, q_mean.detach(), q_log_var.detach())
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

"""A latent-variable model whose posterior is known exactly: probabilistic PCA.

    p(z)   = N(z; 0, I_K)
    p(x|z) = N(x; W z + b, noise_var I_D)            (Tipping and Bishop 1999)

Everything a VAE can only estimate has a closed form here:

    log p(x)  = log N(x; b, C),           C = W W^T + noise_var I_D
    p(z|x)    = N(z; M^{-1} W^T (x - b), noise_var M^{-1}),   M = W^T W + noise_var I_K
    ELBO(q)   = E_q[log p(x|z)] - KL(q(z|x) || p(z))           (eq-elbo-practical)
    log p(x)  = ELBO(q) + KL(q(z|x) || p(z|x))                 (eq-identity)

for any Gaussian q(z|x) = N(q_mean, q_cov). All closed forms are plain differentiable
torch operations on the stored W, b and noise_var (no .item(), no numpy, no detach), in
float64, so torch.autograd can differentiate them with respect to the model's parameters.
Shapes: x (N, D), z (..., N, K), q_mean (N, K), q_cov (K, K) or (N, K, K).

For the joint-KL identity (`bounds.joint_kl_identity`) the module also has the Gaussians
over the stacked (x, z) (`LinearGaussian.joint`, `data_encoder_joint`), the KL and entropy
of Gaussians (`gaussian_kl`, `gaussian_entropy`) and exact expectations of quadratics
(`sigma_points`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import check_count
from .distributions import LOG_2PI, draw_eps
from .objective import ELBO

DTYPE = torch.float64

class MonteCarloEstimate(NamedTuple):
    """A per-example Monte Carlo mean and its standard error (sample std / sqrt(n)), (N,)."""

    mean: torch.Tensor
    stderr: torch.Tensor


def _as_float64(value, name: str) -> torch.Tensor:
    """A float64 tensor from a tensor (cast differentiably, unchanged if already float64),
    an array, a list or a number."""
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
        return value.to(DTYPE)
    try:
        return torch.as_tensor(value, dtype=DTYPE)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or an array of numbers: {err}") from None


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not torch.isfinite(t.detach()).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _cholesky(cov: torch.Tensor, name: str) -> torch.Tensor:
    """Lower Cholesky factor of a batch of symmetric positive-definite matrices, or a
    ValueError naming `name`."""
    c = cov.detach()
    if not torch.allclose(c, c.mT, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} must be symmetric")
    chol, info = torch.linalg.cholesky_ex(cov)
    if (info != 0).any():
        raise ValueError(f"{name} must be positive definite (its Cholesky factorization failed)")
    return chol


def _logdet_from_cholesky(chol: torch.Tensor) -> torch.Tensor:
    """log det(L L^T) = 2 sum_i log L_ii."""
    return 2.0 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)


def sample_q(q_mean: torch.Tensor, q_cov: torch.Tensor, n: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws z = q_mean + L eps, eps ~ N(0, I_K), L L^T = q_cov; shape (n, N, K).

    q_mean is (N, K); q_cov is (K, K) (shared) or (N, K, K). Reparameterized: the draws
    are differentiable functions of q_mean and q_cov.
    """
    q_mean = _as_float64(q_mean, "q_mean")
    if q_mean.dim() != 2:
        raise ValueError(f"q_mean must have shape (N, K), got {tuple(q_mean.shape)}")
    q_cov = _check_q_cov(q_cov, *q_mean.shape)
    check_count("n", n)
    chol = _cholesky(q_cov, "q_cov")
    eps = draw_eps((n, *q_mean.shape), generator, DTYPE)  # (n, N, K)
    return q_mean + (chol @ eps.unsqueeze(-1)).squeeze(-1)


def _check_q_cov(q_cov, n: int, k: int) -> torch.Tensor:
    q_cov = _as_float64(q_cov, "q_cov")
    if q_cov.shape not in ((k, k), (n, k, k)):
        raise ValueError(f"q_cov must have shape ({k}, {k}) or ({n}, {k}, {k}), "
                         f"got {tuple(q_cov.shape)}")
    _check_finite(q_cov, "q_cov")
    return q_cov


class LinearGaussian:
    """Probabilistic PCA: p(z) = N(0, I_K), p(x|z) = N(W z + b, noise_var I_D).

    W (D, K), b (D,) and noise_var (a positive scalar) are stored as given when they
    are float64 tensors (they may require grad); other inputs are converted to float64.
    """

    def __init__(self, W, b, noise_var):
        W = _as_float64(W, "W")
        b = _as_float64(b, "b")
        noise_var = _as_float64(noise_var, "noise_var")
        if W.dim() != 2:
            raise ValueError(f"W must have shape (D, K), got {tuple(W.shape)}")
        if b.shape != (W.shape[0],):
            raise ValueError(f"b must have shape ({W.shape[0]},) to match W {tuple(W.shape)}, "
                             f"got {tuple(b.shape)}")
        if noise_var.dim() != 0:
            raise ValueError(f"noise_var must be a scalar, got shape {tuple(noise_var.shape)}")
        for t, name in ((W, "W"), (b, "b"), (noise_var, "noise_var")):
            _check_finite(t, name)
        if not bool(noise_var.detach() > 0):
            raise ValueError(f"noise_var must be positive, got {float(noise_var.detach()):.3g}")
        self.W, self.b, self.noise_var = W, b, noise_var

    @property
    def x_dim(self) -> int:
        return self.W.shape[0]

    @property
    def z_dim(self) -> int:
        return self.W.shape[1]

    def __repr__(self) -> str:
        return (f"LinearGaussian(x_dim={self.x_dim}, z_dim={self.z_dim}, "
                f"noise_var={float(self.noise_var.detach()):.4g})")

    # ----- fitting -------------------------------------------------------------------
    @classmethod
    def from_pca(cls, x, z_dim: int, ddof: int = 0) -> "LinearGaussian":
        """The maximum-likelihood model of Tipping and Bishop (1999) for the rows of x.

        With S the sample covariance of x (divided by N - ddof; ddof=0 is the ML
        estimate, ddof=1 what scikit-learn's PCA uses), eigenvalues lambda_1 >= ... >=
        lambda_D and eigenvectors U::

            b = mean of x,   noise_var = mean(lambda_{K+1}, ..., lambda_D),
            W = U_K (Lambda_K - noise_var I)^{1/2}   (up to a rotation of z).
        """
        x = _as_float64(x, "x")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, D), got {tuple(x.shape)}")
        _check_finite(x, "x")
        n, d = x.shape
        check_count("z_dim", z_dim)
        if z_dim >= d:
            raise ValueError(f"z_dim must be smaller than the data dimension {d}, got {z_dim}")
        if ddof not in (0, 1) or n <= ddof + 1:
            raise ValueError(f"ddof must be 0 or 1 with more than ddof + 1 rows, got ddof={ddof!r} "
                             f"and {n} rows")
        b = x.mean(0)
        centred = x - b
        cov = centred.T @ centred / (n - ddof)  # (D, D)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        noise_var = eigvals[z_dim:].mean()
        if not noise_var > 0:
            raise ValueError(f"x spans at most z_dim={z_dim} dimensions, so the ML noise_var "
                             "is zero; choose a smaller z_dim")
        W = eigvecs[:, :z_dim] * (eigvals[:z_dim] - noise_var).clamp_min(0).sqrt()  # (D, K)
        return cls(W, b, noise_var)

    # ----- checks --------------------------------------------------------------------
    def _check_x(self, x) -> torch.Tensor:
        x = _as_float64(x, "x")
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (N, {self.x_dim}), got {tuple(x.shape)}")
        _check_finite(x, "x")
        return x

    def _check_q(self, x, q_mean, q_cov):
        x = self._check_x(x)
        q_mean = _as_float64(q_mean, "q_mean")
        if q_mean.shape != (x.shape[0], self.z_dim):
            raise ValueError(f"q_mean must have shape ({x.shape[0]}, {self.z_dim}) for "
                             f"{x.shape[0]} examples, got {tuple(q_mean.shape)}")
        _check_finite(q_mean, "q_mean")
        q_cov = _check_q_cov(q_cov, x.shape[0], self.z_dim)
        return x, q_mean, q_cov, _cholesky(q_cov, "q_cov")

    # ----- the model's densities ----------------------------------------------------
    def marginal_cov(self) -> torch.Tensor:
        """C = W W^T + noise_var I_D, the covariance of p(x); (D, D)."""
        return self.W @ self.W.T + self.noise_var * torch.eye(self.x_dim, dtype=DTYPE)

    def log_evidence(self, x) -> torch.Tensor:
        """log p(x) = log N(x; b, C) = -1/2 [D log 2 pi + log det C + (x-b)^T C^{-1} (x-b)],
        per example; (N,). Computed from the Cholesky factor of the D x D matrix C,
        independently of the posterior."""
        x = self._check_x(x)
        chol = torch.linalg.cholesky(self.marginal_cov())  # (D, D)
        r = torch.linalg.solve_triangular(chol, (x - self.b).T, upper=False)  # (D, N)
        return -0.5 * (self.x_dim * LOG_2PI + _logdet_from_cholesky(chol) + r.pow(2).sum(0))

    def log_px_given_z(self, x, z) -> torch.Tensor:
        """log p(x|z) = log N(x; W z + b, noise_var I_D); z (..., N, K) -> (..., N)."""
        x = self._check_x(x)
        z = _as_float64(z, "z")
        if z.dim() < 2 or z.shape[-2:] != (x.shape[0], self.z_dim):
            raise ValueError(f"z must have shape (..., {x.shape[0]}, {self.z_dim}), "
                             f"got {tuple(z.shape)}")
        resid = x - z @ self.W.T - self.b  # (..., N, D)
        return -0.5 * (resid.pow(2).sum(-1) / self.noise_var
                       + self.x_dim * (LOG_2PI + self.noise_var.log()))

    def log_prior(self, z) -> torch.Tensor:
        """log p(z) = log N(z; 0, I_K), summed over the last dimension."""
        z = _as_float64(z, "z")
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)

    def _posterior_precision_factor(self) -> torch.Tensor:
        """Cholesky factor of M = W^T W + noise_var I_K; (K, K)."""
        m = self.W.T @ self.W + self.noise_var * torch.eye(self.z_dim, dtype=DTYPE)
        return torch.linalg.cholesky(m)

    def posterior(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior p(z|x) = N(mean, cov):
        mean = M^{-1} W^T (x - b)  (N, K),   cov = noise_var M^{-1}  (K, K), the same for
        every x, with M = W^T W + noise_var I_K."""
        x = self._check_x(x)
        chol_m = self._posterior_precision_factor()
        mean = torch.cholesky_solve(((x - self.b) @ self.W).T, chol_m).T  # (N, K)
        cov = self.noise_var * torch.cholesky_inverse(chol_m)  # (K, K)
        return mean, 0.5 * (cov + cov.T)

    def posterior_map(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact posterior written as a linear encoder: p(z|x) = N(A x + c, S) with
        A = M^{-1} W^T  (K, D),   c = -A b  (K,),   S = noise_var M^{-1}  (K, K),
        so that posterior(x) == (x @ A.T + c, S)."""
        chol_m = self._posterior_precision_factor()
        A = torch.cholesky_solve(self.W.T, chol_m)  # (K, D)
        S = self.noise_var * torch.cholesky_inverse(chol_m)
        return A, -(A @ self.b), 0.5 * (S + S.T)

    def joint(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's joint p(x, z) = p(z) p(x|z), a Gaussian over the stacked vector
        (x, z) of length D + K::

            mean = (b, 0),   cov = [[W W^T + noise_var I_D,  W  ],
                                    [W^T,                     I_K]]
        """
        k = self.z_dim
        mean = torch.cat([self.b, torch.zeros(k, dtype=DTYPE)])
        cov = torch.cat([torch.cat([self.marginal_cov(), self.W], 1),
                         torch.cat([self.W.T, torch.eye(k, dtype=DTYPE)], 1)], 0)
        return mean, cov

    # ----- the ELBO and the gap -------------------------------------------------------
    def elbo_terms(self, x, q_mean, q_cov) -> ELBO:
        """The exact ELBO of q(z|x) = N(q_mean, q_cov) and its two terms (eq-elbo-practical)::

            E_q[log p(x|z)] = -1/2 [D log(2 pi noise_var)
                                    + (|x - W m - b|^2 + tr(W^T W S)) / noise_var]
            KL(q || p(z))   =  1/2 [tr(S) + m^T m - K - log det S]

        with m = q_mean and S = q_cov."""
        x, m, s, chol_s = self._check_q(x, q_mean, q_cov)
        resid = x - m @ self.W.T - self.b  # (N, D)
        trace_wws = ((self.W.T @ self.W) * s).sum((-2, -1))  # () or (N,)
        log_px_given_z = -0.5 * (self.x_dim * (LOG_2PI + self.noise_var.log())
                                 + (resid.pow(2).sum(-1) + trace_wws) / self.noise_var)
        trace_s = torch.diagonal(s, dim1=-2, dim2=-1).sum(-1)
        kl_to_prior = 0.5 * (trace_s + m.pow(2).sum(-1) - self.z_dim
                             - _logdet_from_cholesky(chol_s))
        return ELBO(log_px_given_z - kl_to_prior, log_px_given_z, kl_to_prior)

    def elbo(self, x, q_mean, q_cov) -> torch.Tensor:
        """ELBO(q) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), exact, per example; (N,)."""
        return self.elbo_terms(x, q_mean, q_cov).elbo

    def kl_to_posterior(self, x, q_mean, q_cov) -> torch.Tensor:
        """KL(q(z|x) || p(z|x)) for q = N(m, S) and p(z|x) = N(mu, Sigma), per example::

            1/2 [tr(Sigma^{-1} S) + (mu - m)^T Sigma^{-1} (mu - m) - K
                 + log det Sigma - log det S],

        with Sigma^{-1} = M / noise_var and log det Sigma = K log noise_var - log det M."""
        x, m, s, chol_s = self._check_q(x, q_mean, q_cov)
        chol_m = self._posterior_precision_factor()
        precision = chol_m @ chol_m.T / self.noise_var  # Sigma^{-1} = M / noise_var, (K, K)
        mu = torch.cholesky_solve(((x - self.b) @ self.W).T, chol_m).T  # (N, K)
        diff = mu - m
        maha = ((diff @ precision) * diff).sum(-1)
        trace = (precision * s).sum((-2, -1))
        logdet_sigma = self.z_dim * self.noise_var.log() - _logdet_from_cholesky(chol_m)
        return 0.5 * (trace + maha - self.z_dim + logdet_sigma - _logdet_from_cholesky(chol_s))

    def elbo_monte_carlo(self, x, q_mean, q_cov, n_samples: int,
                         generator: torch.Generator | None = None,
                         analytic_kl: bool = False) -> MonteCarloEstimate:
        """A Monte Carlo ELBO estimate from n_samples draws z_s ~ q(z|x), per example.

        By default the average of log p(x|z_s) + log p(z_s) - log q(z_s|x) (nothing exact
        is used); with analytic_kl=True the average of log p(x|z_s) minus the closed-form
        KL(q || p(z)), as a VAE computes it. Returns the mean and its standard error."""
        x, m, s, chol_s = self._check_q(x, q_mean, q_cov)
        check_count("n_samples", n_samples)
        if n_samples < 2:
            raise ValueError("n_samples must be at least 2 to give a standard error")
        eps = draw_eps((n_samples, *m.shape), generator, DTYPE)  # (S, N, K)
        z = m + (chol_s @ eps.unsqueeze(-1)).squeeze(-1)  # (S, N, K)
        values = self.log_px_given_z(x, z)  # (S, N)
        if analytic_kl:
            values = values - self.elbo_terms(x, m, s).kl_to_prior
        else:
            # log q(z|x) = -1/2 [K log 2 pi + log det S + |eps|^2] since z - m = L eps
            log_q = -0.5 * (self.z_dim * LOG_2PI + _logdet_from_cholesky(chol_s)
                            + eps.pow(2).sum(-1))
            values = values + self.log_prior(z) - log_q
        return MonteCarloEstimate(values.mean(0), values.std(0) / math.sqrt(n_samples))


# ----- Gaussians over (x, z), for the joint-KL identity ------------------------------------

def gaussian_kl(mean0, cov0, mean1, cov1) -> torch.Tensor:
    """KL(N(mean0, cov0) || N(mean1, cov1)) for two n-dimensional Gaussians (full covariances)::

        1/2 [tr(cov1^{-1} cov0) + (mean1 - mean0)^T cov1^{-1} (mean1 - mean0) - n
             + log det cov1 - log det cov0]
    """
    mean0, cov0 = _as_float64(mean0, "mean0"), _as_float64(cov0, "cov0")
    mean1, cov1 = _as_float64(mean1, "mean1"), _as_float64(cov1, "cov1")
    n = mean0.shape[-1]
    if mean1.shape != mean0.shape or cov0.shape != (n, n) or cov1.shape != (n, n):
        raise ValueError(f"need two means of shape ({n},) and two covariances ({n}, {n}), got "
                         f"{tuple(mean0.shape)}, {tuple(cov0.shape)}, {tuple(mean1.shape)}, "
                         f"{tuple(cov1.shape)}")
    chol0, chol1 = _cholesky(cov0, "cov0"), _cholesky(cov1, "cov1")
    trace = torch.cholesky_solve(cov0, chol1).diagonal().sum()
    maha = torch.linalg.solve_triangular(chol1, (mean1 - mean0)[:, None], upper=False).pow(2).sum()
    return 0.5 * (trace + maha - n + _logdet_from_cholesky(chol1) - _logdet_from_cholesky(chol0))


def gaussian_entropy(cov) -> torch.Tensor:
    """The differential entropy H(N(mean, cov)) = 1/2 [n (1 + log 2 pi) + log det cov], in
    nats (negative for a Gaussian narrower than about 0.24 per dimension)."""
    cov = _as_float64(cov, "cov")
    return 0.5 * (cov.shape[-1] * (1 + LOG_2PI) + _logdet_from_cholesky(_cholesky(cov, "cov")))


def sigma_points(mean, cov) -> torch.Tensor:
    """2n points x_i = mean +- sqrt(n) L e_i (L L^T = cov), whose empirical mean and
    covariance (divided by 2n) are exactly mean and cov; shape (2n, n). The mean of any
    quadratic function of x over these points is therefore its exact expectation under
    N(mean, cov) (the unscented transform is exact for quadratics)."""
    mean, cov = _as_float64(mean, "mean"), _as_float64(cov, "cov")
    n = mean.shape[-1]
    if mean.shape != (n,) or cov.shape != (n, n):
        raise ValueError(f"mean must be (n,) and cov (n, n), got {tuple(mean.shape)}, "
                         f"{tuple(cov.shape)}")
    spread = math.sqrt(n) * _cholesky(cov, "cov").T  # row i: sqrt(n) L e_i
    return torch.cat([mean + spread, mean - spread])


def data_encoder_joint(data_mean, data_cov, A, c, q_cov) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's joint p_D(x) q(z|x) over the stacked (x, z), for a Gaussian data
    distribution p_D = N(m, Sigma) and a linear Gaussian encoder q(z|x) = N(A x + c, S)::

        mean = (m, A m + c),   cov = [[Sigma,      Sigma A^T        ],
                                      [A Sigma,    A Sigma A^T + S  ]]
    """
    m, sigma = _as_float64(data_mean, "data_mean"), _as_float64(data_cov, "data_cov")
    A, c, s = _as_float64(A, "A"), _as_float64(c, "c"), _as_float64(q_cov, "q_cov")
    k, d = A.shape
    if m.shape != (d,) or sigma.shape != (d, d) or c.shape != (k,) or s.shape != (k, k):
        raise ValueError(f"shapes do not fit A {(k, d)}: data_mean {tuple(m.shape)}, data_cov "
                         f"{tuple(sigma.shape)}, c {tuple(c.shape)}, q_cov {tuple(s.shape)}")
    mean = torch.cat([m, A @ m + c])
    cross = A @ sigma  # (K, D)
    cov = torch.cat([torch.cat([sigma, cross.T], 1), torch.cat([cross, cross @ A.T + s], 1)], 0)
    return mean, 0.5 * (cov + cov.T)

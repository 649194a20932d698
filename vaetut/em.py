"""Two ways to climb the ELBO on the exact linear-Gaussian model (chapter 4).

EM (Dempster, Laird and Rubin 1977) alternates an E-step that sets q(z|x) to the exact
posterior p_theta(z|x), closing the gap log p(x) - ELBO to zero, and an M-step that
maximizes the ELBO over theta = (W, b, noise_var) for that q, in closed form
(Tipping and Bishop 1999; Bishop 2006, section 12.2.2). Joint gradient ascent instead
takes Adam steps on theta and on an amortized linear q(z|x) = N(A x + c, L L^T) at
once, as a VAE does with its decoder and encoder. Both should reach the maximum
likelihood solution, which for this model is known in closed form
(`LinearGaussian.from_pca`).

log p(x) depends on W only through W W^T, so every rotation W R of a maximum is one too.
The ELBO of a diagonal-covariance q (`run_joint_ascent(diagonal_q=True)`) is not
rotation-invariant: its gap is zero only where W^T W is diagonal, so joint ascent picks the
rotation with orthogonal columns (`largest_column_cosine`), while a full-covariance q leaves
the rotation where it started.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .exact import DTYPE, LinearGaussian


@dataclass
class ClimbHistory:
    """Means over the data, in nats per example, at the iterations listed in `steps`:
    log p(x), the ELBO of the current q under the current theta, and their gap
    KL(q || p_theta(z|x))."""

    log_px: list[float] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def append(self, model: LinearGaussian, x: torch.Tensor, q_mean: torch.Tensor,
               q_cov: torch.Tensor) -> None:
        with torch.no_grad():
            self.log_px.append(float(model.log_evidence(x).mean()))
            self.elbo.append(float(model.elbo(x, q_mean, q_cov).mean()))
            self.gap.append(float(model.kl_to_posterior(x, q_mean, q_cov).mean()))


def em_step(model: LinearGaussian, x: torch.Tensor
            ) -> tuple[LinearGaussian, tuple[torch.Tensor, torch.Tensor]]:
    """One EM iteration for probabilistic PCA; returns (new model, the E-step's q).

    E-step: q(z_n) = p_theta(z_n|x_n) = N(m_n, S). M-step: with z~_n = (z_n, 1) and
    W~ = [W, b], maximize sum_n E_q[log p(x_n|z_n)] over W~ and noise_var:
        W~ = (sum_n x_n E[z~_n]^T) (sum_n E[z~_n z~_n^T])^{-1}
        noise_var = 1/(N D) sum_n E|x_n - W~ z~_n|^2
    (b is updated jointly with W, so this is EM for all of theta; the KL to the prior
    does not depend on theta).
    """
    x = x.to(DTYPE)
    n, d = x.shape
    k = model.z_dim
    with torch.no_grad():
        q_mean, q_cov = model.posterior(x)  # (N, K), (K, K)
        ez = torch.cat([q_mean, torch.ones(n, 1, dtype=DTYPE)], 1)  # (N, K+1)
        ezz = ez.T @ ez  # (K+1, K+1): sum_n E[z~] E[z~]^T ...
        ezz[:k, :k] += n * q_cov  # ... plus the posterior covariance of each z_n
        w_aug = torch.linalg.solve(ezz, ez.T @ x).T  # (D, K+1) = (x^T ez) ezz^{-1}
        sq = (x.pow(2).sum() - 2 * ((ez @ w_aug.T) * x).sum()
              + (ezz * (w_aug.T @ w_aug)).sum())
        new = LinearGaussian(w_aug[:, :k].clone(), w_aug[:, k].clone(), sq / (n * d))
    return new, (q_mean, q_cov)


def run_em(model: LinearGaussian, x: torch.Tensor, n_iter: int
           ) -> tuple[LinearGaussian, ClimbHistory]:
    """n_iter EM iterations. The history records, after each M-step, log p(x) under the
    new theta and the ELBO of the E-step's q under the new theta (the gap is then > 0;
    the next E-step closes it)."""
    x = x.to(DTYPE)
    history = ClimbHistory()
    for i in range(n_iter):
        model, (q_mean, q_cov) = em_step(model, x)
        history.append(model, x, q_mean, q_cov)
        history.steps.append(i + 1)
    return model, history


class LinearEncoder(torch.nn.Module):
    """An amortized q(z|x) = N(A x + c, L L^T): mean linear in x, one full covariance
    shared by all x (L lower triangular with a positive diagonal). For this model the
    exact posterior has exactly this form, so q can close the gap.

    With diagonal=True, L is diagonal (its strictly lower part is not used), so q is a
    diagonal Gaussian, as a VAE's encoder is: it contains the posterior only where the
    posterior's covariance noise_var (W^T W + noise_var I)^{-1} is diagonal, that is,
    where the columns of W are orthogonal."""

    def __init__(self, x_dim: int, z_dim: int, diagonal: bool = False):
        super().__init__()
        self.diagonal = diagonal
        self.A = torch.nn.Parameter(torch.zeros(z_dim, x_dim, dtype=DTYPE))
        self.c = torch.nn.Parameter(torch.zeros(z_dim, dtype=DTYPE))
        self.L_raw = torch.nn.Parameter(torch.zeros(z_dim, z_dim, dtype=DTYPE))  # q = prior

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = torch.diag(self.L_raw.diagonal().exp())
        if not self.diagonal:
            L = torch.tril(self.L_raw, -1) + L
        return x @ self.A.T + self.c, L @ L.T  # (N, K), (K, K)


def run_joint_ascent(model: LinearGaussian, x: torch.Tensor, n_steps: int, lr: float = 0.01,
                     record_every: int = 1, diagonal_q: bool = False,
                     lr_end: float | None = None
                     ) -> tuple[LinearGaussian, LinearEncoder, ClimbHistory]:
    """Adam on theta = (W, b, log noise_var) and on a LinearEncoder at once, maximizing the
    exact mean ELBO over x (full batch). Returns the final model, the encoder and the
    history, recorded before steps 0, record_every, 2 * record_every, ... and at the end
    (history.steps holds those step numbers).

    diagonal_q=True uses a diagonal-covariance encoder (LinearEncoder(diagonal=True)).
    With lr_end, the learning rate falls linearly from lr (step 0) to lr_end (the last
    step), so that the end point is not one of Adam's late spikes; by default it is constant."""
    x = x.to(DTYPE)
    W = model.W.detach().clone().requires_grad_(True)
    b = model.b.detach().clone().requires_grad_(True)
    log_nv = model.noise_var.detach().log().clone().requires_grad_(True)
    encoder = LinearEncoder(model.x_dim, model.z_dim, diagonal=diagonal_q)
    optimizer = torch.optim.Adam([W, b, log_nv, *encoder.parameters()], lr=lr)
    schedule = None
    if lr_end is not None:
        if not 0 < lr_end <= lr:
            raise ValueError(f"lr_end must lie in (0, lr] = (0, {lr}], got {lr_end}")
        last = max(1, n_steps - 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1 - (1 - lr_end / lr) * min(step, last) / last)
    history = ClimbHistory()
    for step in range(n_steps + 1):
        current = LinearGaussian(W, b, log_nv.exp())
        q_mean, q_cov = encoder(x)
        if step % record_every == 0 or step == n_steps:
            history.append(current, x, q_mean.detach(), q_cov.detach())
            history.steps.append(step)
        if step == n_steps:
            break
        loss = -current.elbo(x, q_mean, q_cov).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    final = LinearGaussian(W.detach(), b.detach(), log_nv.detach().exp())
    return final, encoder, history


def largest_column_cosine(W: torch.Tensor) -> float:
    """max_{i != j} |cos angle(w_i, w_j)| over the columns of W, that is, the largest
    off-diagonal entry of W^T W after scaling it to a unit diagonal,
    |(W^T W)_ij| / sqrt((W^T W)_ii (W^T W)_jj). Zero exactly when W^T W is diagonal, the
    decoders whose posterior a diagonal q can equal."""
    wtw = W.detach().to(DTYPE).T @ W.detach().to(DTYPE)
    scale = wtw.diagonal().sqrt()
    cosines = wtw / scale[:, None] / scale[None, :]
    cosines.fill_diagonal_(0.0)
    return float(cosines.abs().max())


def perturbed(model: LinearGaussian, scale: float, generator: torch.Generator | None = None
              ) -> LinearGaussian:
    """A copy of model with W and b moved by scale * N(0, 1) noise and noise_var doubled:
    a theta away from the maximum, where the likelihood's gradient is not zero."""
    W = model.W.detach() + scale * torch.randn(model.W.shape, dtype=DTYPE, generator=generator)
    b = model.b.detach() + scale * torch.randn(model.b.shape, dtype=DTYPE, generator=generator)
    return LinearGaussian(W, b, 2 * model.noise_var.detach())

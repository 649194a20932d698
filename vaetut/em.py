"""Two ways to climb the ELBO on the exact linear-Gaussian model: EM and joint ascent.

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

The same two climbs along one decoder parameter draw the bound-against-theta picture of
*Understanding Deep Learning* (Prince 2023, ch. 17): W scaled by one number s,
theta(s) = (s W, b, noise_var), log p_theta(s)(x) and the ELBO(theta(s), q) of a fixed q are
curves over s (`bound_slice`). An E-step (q = the posterior at the current s) makes the
ELBO touch log p(x) there; an M-step (the best s for that q, `best_scale`, in closed form)
climbs the bound. `em_in_scale` takes these steps in turns (coordinate ascent on
F(q, theta), Neal and Hinton 1998); `joint_ascent_in_scale` takes partial Adam steps on s
and on an amortized linear encoder at once, from one loss, as a VAE does. Along s the
ELBO's gradient is d log p(x)/ds - d KL(q || p_theta(z|x))/ds (`scale_gradient_split`).

All quantities are float64 means over the rows of x, in nats per example.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .checks import check_count
from .exact import DTYPE, LinearGaussian


@dataclass
class ClimbHistory:
    """A climb of the ELBO, one row per recorded point: means over the data, in nats per
    example, of log p(x), the ELBO of the current q under the current theta, and their gap
    KL(q || p_theta(z|x)); the iteration `steps` and what led there, `kind` ("EM", "joint";
    for a climb in s "start", "E" for a step in q, "M" for a step in s). A climb in the
    scale s of W also keeps `s` and each point's (q_mean, q_cov), detached, in `qs`."""

    log_px: list[float] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    s: list[float] = field(default_factory=list)
    qs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def append(self, model: LinearGaussian, x: torch.Tensor, q_mean: torch.Tensor,
               q_cov: torch.Tensor, step: int, kind: str, s: float | None = None) -> None:
        """Record the point (theta = model, q = N(q_mean, q_cov)) reached at `step`; with
        `s`, model is theta(s) of a climb in s, and s and q are kept too."""
        with torch.no_grad():
            self.log_px.append(float(model.log_evidence(x).mean()))
            self.elbo.append(float(model.elbo(x, q_mean, q_cov).mean()))
            self.gap.append(float(model.kl_to_posterior(x, q_mean, q_cov).mean()))
        self.steps.append(step)
        self.kind.append(kind)
        if s is not None:
            self.s.append(float(s))
            self.qs.append((q_mean.detach(), q_cov.detach()))


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
        history.append(model, x, q_mean, q_cov, i + 1, "EM")
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
            history.append(current, x, q_mean.detach(), q_cov.detach(), step, "joint")
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


# ----- the same climbs along one decoder parameter s: theta(s) = (s W, b, noise_var) -------
def scaled(model: LinearGaussian, s: float) -> LinearGaussian:
    """theta(s): the model with W scaled by s (b and noise_var unchanged)."""
    return LinearGaussian(s * model.W.detach(), model.b.detach(), model.noise_var.detach())


def bound_slice(model: LinearGaussian, x: torch.Tensor, scales: torch.Tensor,
                q_mean: torch.Tensor, q_cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x), ELBO(theta(s), q)) at each s in `scales`, means over x; each (G,).
    q = N(q_mean, q_cov) is held fixed while s moves."""
    x = x.to(DTYPE)
    log_px, elbo = [], []
    with torch.no_grad():
        for s in scales.tolist():
            m = scaled(model, s)
            log_px.append(m.log_evidence(x).mean())
            elbo.append(m.elbo(x, q_mean, q_cov).mean())
    return torch.stack(log_px), torch.stack(elbo)


def best_scale(model: LinearGaussian, x: torch.Tensor, q_mean: torch.Tensor,
               q_cov: torch.Tensor) -> float:
    """The s that maximizes the mean ELBO(theta(s), q) for a fixed q: an M-step in s.

    Only E_q[log p(x|z)] depends on s; with r = x - b and m, S the mean and covariance of q,
    sum_n E_q|r_n - s W z|^2 is quadratic in s, so the maximum is
        s* = sum_n r_n^T W m_n / sum_n (m_n^T W^T W m_n + tr(W^T W S_n))."""
    x = x.to(DTYPE)
    W, b = model.W.detach(), model.b.detach()
    wtw = W.T @ W
    m = q_mean.detach().to(DTYPE)
    s_cov = q_cov.detach().to(DTYPE)
    trace = (wtw * s_cov).sum((-2, -1))
    trace = trace * torch.ones(len(x), dtype=DTYPE) if trace.dim() == 0 else trace
    numerator = (((x - b) @ W) * m).sum()
    denominator = ((m @ wtw) * m).sum() + trace.sum()
    return float(numerator / denominator)


def em_in_scale(model: LinearGaussian, x: torch.Tensor, s0: float, q_mean: torch.Tensor,
                q_cov: torch.Tensor, n_iter: int) -> ClimbHistory:
    """Coordinate ascent on F(q, s) = ELBO(theta(s), q): from (s0, q) alternate an E-step
    (q = the exact posterior of theta(s)) and an M-step (s = best_scale for that q),
    n_iter times each. The climb records the start and the point after every step."""
    check_count("n_iter", n_iter)
    x = x.to(DTYPE)
    climb = ClimbHistory()
    s = float(s0)
    climb.append(scaled(model, s), x, q_mean, q_cov, 0, "start", s)
    for i in range(n_iter):
        q_mean, q_cov = scaled(model, s).posterior(x)
        climb.append(scaled(model, s), x, q_mean, q_cov, 2 * i + 1, "E", s)
        s = best_scale(model, x, q_mean, q_cov)
        climb.append(scaled(model, s), x, q_mean, q_cov, 2 * i + 2, "M", s)
    return climb


def joint_ascent_in_scale(model: LinearGaussian, x: torch.Tensor, s0: float, n_steps: int,
                          lr: float = 0.05) -> tuple[ClimbHistory, LinearEncoder]:
    """Adam on s and on an amortized q(z|x) = N(A x + c, L L^T) (em.LinearEncoder, starting
    at q = the prior) at once, one step per iteration, both from the gradient of the same
    loss -mean ELBO(theta(s), q): partial steps on F(q, s), never an exact E- or M-step.
    The climb records the start and the point after every step."""
    check_count("n_steps", n_steps)
    x = x.to(DTYPE)
    W, b, noise_var = model.W.detach(), model.b.detach(), model.noise_var.detach()
    s = torch.tensor(float(s0), dtype=DTYPE, requires_grad=True)
    encoder = LinearEncoder(model.x_dim, model.z_dim)
    optimizer = torch.optim.Adam([s, *encoder.parameters()], lr=lr)
    climb = ClimbHistory()
    q_mean, q_cov = encoder(x)
    climb.append(scaled(model, float(s.detach())), x, q_mean.detach(), q_cov.detach(), 0,
                 "start", float(s.detach()))
    for step in range(1, n_steps + 1):
        q_mean, q_cov = encoder(x)
        loss = -LinearGaussian(s * W, b, noise_var).elbo(x, q_mean, q_cov).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            q_mean, q_cov = encoder(x)
        climb.append(scaled(model, float(s.detach())), x, q_mean, q_cov, step, "joint",
                     float(s.detach()))
    return climb, encoder


class GradientSplit(NamedTuple):
    """Derivatives in s of the means over x, at one s and one q (nats per unit of s):
    d_log_px = d/ds log p(x), minus_d_gap = -d/ds KL(q || p_theta(s)(z|x)), and d_elbo =
    d/ds ELBO(theta(s), q), each from its own closed form (log_evidence, kl_to_posterior,
    elbo); d_elbo = d_log_px + minus_d_gap by the identity (eq-identity)."""

    d_log_px: float
    minus_d_gap: float
    d_elbo: float


def scale_gradient_split(model: LinearGaussian, x: torch.Tensor, s: float, q_mean: torch.Tensor,
                         q_cov: torch.Tensor) -> GradientSplit:
    """The ELBO's gradient in the decoder parameter s split as
        d/ds ELBO = d/ds log p_theta(s)(x) - d/ds KL(q || p_theta(s)(z|x))
    for a fixed q = N(q_mean, q_cov), by autograd on each closed form."""
    x = x.to(DTYPE)
    q_mean, q_cov = q_mean.detach().to(DTYPE), q_cov.detach().to(DTYPE)
    scale = torch.tensor(float(s), dtype=DTYPE, requires_grad=True)
    m = LinearGaussian(scale * model.W.detach(), model.b.detach(), model.noise_var.detach())
    values = (m.log_evidence(x).mean(), m.kl_to_posterior(x, q_mean, q_cov).mean(),
              m.elbo(x, q_mean, q_cov).mean())
    d_log_px, d_gap, d_elbo = (float(torch.autograd.grad(v, scale, retain_graph=True)[0])
                               for v in values)
    return GradientSplit(d_log_px, -d_gap, d_elbo)

"""The computations behind the answer page (book/answer.ipynb).

* Backprop's order is only how reverse mode computes one gradient vector: forward mode
  (`forward_directional`), which pushes a tangent from the encoder to the decoder, gives
  the same directional derivatives of the same loss.
* The bound-against-theta picture of *Understanding Deep Learning* (Prince 2023, ch. 17),
  on the exact linear-Gaussian model (probabilistic PCA, vaetut.exact): the decoder's
  W is scaled by one number s, theta(s) = (s W, b, noise_var), and log p_theta(s)(x) and the
  ELBO(theta(s), q) of a fixed q are curves over s (`bound_slice`). An E-step (q = the
  posterior at the current s) makes the ELBO touch log p(x) there; an M-step (the best s
  for that q, `best_scale`, in closed form) climbs the bound. `em_in_scale` takes these
  steps in turns (coordinate ascent on F(q, theta), Neal and Hinton 1998);
  `joint_ascent_in_scale` takes partial Adam steps on s and on an amortized linear
  encoder at once, from one loss, as a VAE does.
* The ELBO's theta-gradient is grad log p(x) - grad KL(q || p_theta(z|x)): along s, the two
  terms at a given q (`scale_gradient_split`), the dip of a joint climb from q = the prior.
* Averaged over a data distribution p_D, the ELBO is minus a KL between joint distributions
  over (x, z), less the data's entropy (`joint_kl_identity`, Gaussian p_D, linear q).
* Wake-sleep's sleep phase fits q by KL(p || q), the ELBO by KL(q || p): for a diagonal
  Gaussian q and a correlated Gaussian posterior the two have different optima
  (`diagonal_q_optima`).

All exact-model quantities are float64 means over the rows of x, in nats per example.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.func import functional_call, jvp

from .em import LinearEncoder
from .exact import (DTYPE, LinearGaussian, data_encoder_joint, gaussian_entropy, gaussian_kl,
                    sigma_points)
from .gradients import elbo_terms_at
from .model import VAE
from .objective import check_count


# ---- the order of differentiation ---------------------------------------------------------

class _Loss(torch.nn.Module):
    """-mean ELBO of `vae` at fixed noise eps, as a module, so torch.func can call it with
    its parameters swapped for others (names carry the prefix "vae.")."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return -elbo_terms_at(self.vae, x, eps).elbo.mean()


def forward_directional(model: VAE, x: torch.Tensor, eps: torch.Tensor,
                        direction: dict[str, torch.Tensor]) -> float:
    """The derivative of the loss -mean ELBO (at the fixed noise eps (S, B, z_dim)) along
    `direction` (one tensor per parameter name of `model`), in forward mode
    (torch.func.jvp): the tangent travels with the forward pass, parameters -> encoder ->
    z -> decoder -> loss, and no backward pass is run. Reverse mode gives the same
    number as the sum over parameters of <gradient, direction>."""
    loss_module = _Loss(model)
    params = {f"vae.{n}": p.detach() for n, p in model.named_parameters()}
    tangents = {f"vae.{n}": direction[n].to(p) for n, p in model.named_parameters()}

    def loss(p):
        return functional_call(loss_module, p, (x, eps))

    _, derivative = jvp(loss, (params,), (tangents,))
    return float(derivative)


# ---- the bound against one decoder parameter -------------------------------------------

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


@dataclass
class ScaleClimb:
    """A climb in s. Row i of each list is one point of the climb: s, log p(x) at s, and the
    ELBO at s of the q in use there (gap = log p(x) - ELBO >= 0); `kind` says which step
    led there ("start", "E" for a step in q, "M" for a step in s, "joint" for one Adam step
    on both). `qs` holds each point's (q_mean, q_cov), detached."""

    s: list[float] = field(default_factory=list)
    log_px: list[float] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    qs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add(self, model: LinearGaussian, x: torch.Tensor, s: float, q_mean: torch.Tensor,
            q_cov: torch.Tensor, kind: str) -> None:
        q_mean, q_cov = q_mean.detach(), q_cov.detach()
        m = scaled(model, s)
        with torch.no_grad():
            self.log_px.append(float(m.log_evidence(x).mean()))
            self.elbo.append(float(m.elbo(x, q_mean, q_cov).mean()))
        self.s.append(float(s))
        self.kind.append(kind)
        self.qs.append((q_mean, q_cov))

    @property
    def gap(self) -> list[float]:
        return [lp - e for lp, e in zip(self.log_px, self.elbo)]


def em_in_scale(model: LinearGaussian, x: torch.Tensor, s0: float, q_mean: torch.Tensor,
                q_cov: torch.Tensor, n_iter: int) -> ScaleClimb:
    """Coordinate ascent on F(q, s) = ELBO(theta(s), q): from (s0, q) alternate an E-step
    (q = the exact posterior of theta(s)) and an M-step (s = best_scale for that q),
    n_iter times each. The climb records the start and the point after every step."""
    check_count("n_iter", n_iter)
    x = x.to(DTYPE)
    climb = ScaleClimb()
    s = float(s0)
    climb.add(model, x, s, q_mean, q_cov, "start")
    for _ in range(n_iter):
        q_mean, q_cov = scaled(model, s).posterior(x)
        climb.add(model, x, s, q_mean, q_cov, "E")
        s = best_scale(model, x, q_mean, q_cov)
        climb.add(model, x, s, q_mean, q_cov, "M")
    return climb


def joint_ascent_in_scale(model: LinearGaussian, x: torch.Tensor, s0: float, n_steps: int,
                          lr: float = 0.05) -> tuple[ScaleClimb, LinearEncoder]:
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
    climb = ScaleClimb()
    q_mean, q_cov = encoder(x)
    climb.add(model, x, float(s.detach()), q_mean, q_cov, "start")
    for _ in range(n_steps):
        q_mean, q_cov = encoder(x)
        loss = -LinearGaussian(s * W, b, noise_var).elbo(x, q_mean, q_cov).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            q_mean, q_cov = encoder(x)
        climb.add(model, x, float(s.detach()), q_mean, q_cov, "joint")
    return climb, encoder


def draw_climb(ax, model: LinearGaussian, x: torch.Tensor, climb: ScaleClimb,
               scales: torch.Tensor, curves_at: list[int], title: str = ""):
    """log p(x) against s (thick grey), the ELBO curve of the q of each climb point listed
    in `curves_at` (thin, dashed), and the climb's path: for up to 20 points, dots joined by
    arrows (vertical for a step in q, along the bound for a step in s); for more, a line
    with a dot every 10 steps."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    x = x.to(DTYPE)
    log_px, _ = bound_slice(model, x, scales, *climb.qs[0])
    ax.plot(scales.numpy(), log_px.numpy(), color="black", lw=3, alpha=0.45,
            label=r"$\log p_\theta(x)$")
    for j, i in enumerate(curves_at):
        _, elbo = bound_slice(model, x, scales, *climb.qs[i])
        ax.plot(scales.numpy(), elbo.numpy(), ls="--", lw=1,
                color=plt.cm.viridis(j / max(1, len(curves_at))), label=f"ELBO, q of step {i}")
    if len(climb.s) <= 20:  # a few exact steps: one arrow each
        ax.plot(climb.s, climb.elbo, "o", ms=3, color="tab:red", zorder=3)
        for i in range(1, len(climb.s)):
            ax.annotate("", xy=(climb.s[i], climb.elbo[i]),
                        xytext=(climb.s[i - 1], climb.elbo[i - 1]),
                        arrowprops=dict(arrowstyle="->", color="tab:red", lw=1, shrinkA=0, shrinkB=0))
    else:  # many small steps: the path, with a dot every 10 steps
        ax.plot(climb.s, climb.elbo, "-", color="tab:red", lw=1.2, label="path of the climb")
        ax.plot(climb.s[::10], climb.elbo[::10], "o", ms=3, color="tab:red", zorder=3)
    ax.set_xlabel(r"decoder parameter $s$ (scale of $W$)")
    ax.set_ylabel("nats per digit")
    if title:
        ax.set_title(title)
    return ax


# ---- the two terms of the ELBO's gradient in theta -------------------------------------------

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


# ---- the joint-KL identity ------------------------------------------------------------------

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


# ---- wake-sleep's other objective ----------------------------------------------------------

def diagonal_q_optima(post_cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a Gaussian posterior N(mu, Sigma) and a diagonal Gaussian q = N(mu, diag v):
    the v that minimizes KL(q || p) (what the ELBO does) is 1 / diag(Sigma^{-1}); the v that
    minimizes KL(p || q) (what wake-sleep's sleep phase does) is diag(Sigma). Returns both,
    (K,) each; they agree only when Sigma is diagonal."""
    post_cov = post_cov.detach().to(DTYPE)
    return 1.0 / torch.linalg.inv(post_cov).diagonal(), post_cov.diagonal().clone()

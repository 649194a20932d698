"""Where the ELBO's gradient goes: split by term and by parameter group.

The scalar that training differentiates is the negative ELBO averaged over a batch,

    loss = -(1/B) sum_b [ E_q[log p_theta(x_b|z)] - KL(q_phi(z|x_b) || p(z)) ],

with z = q_mean + sigma * eps (Kingma and Welling 2013). This module takes that scalar
apart: the gradient of each term with respect to the encoder's (phi) and the decoder's
(theta) parameters, for one fixed eps so that both terms see the same z
(`term_gradients`, `head_gradients`); the order in which the backward pass reaches each
module (`record_backward_order`) and the same derivatives in forward mode
(`forward_directional`); the score-function (REINFORCE, Williams 1992) estimator of the
encoder's gradient next to the reparameterization estimator (`encoder_gradient`), to
compare their variances (Mohamed et al. 2020); the gradients of the ELBO with a Monte Carlo
KL with and without "sticking the landing" (Roeder, Wu and Duvenaud 2017;
`mc_kl_encoder_gradients`); and small independent checks (`finite_difference`,
`projection_shares`, `adam_first_step`). The objectives it differentiates are in
`vaetut.objective`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, jvp

from .checks import check_input
from .distributions import (draw_eps, kl_to_prior, log_diag_normal, log_px_given_z,
                            reparameterize)
from .model import VAE
from .objective import elbo, elbo_mc_kl

if TYPE_CHECKING:
    from .exact import LinearGaussian

TERMS = ("log_px_given_z", "kl_to_prior", "elbo")


@dataclass
class TermGradients:
    """Gradients of the batch means of each term (TERMS) with respect to every parameter.

    grads[term][name] is a tensor shaped like the parameter `name`, as torch.autograd.grad
    returns it (with materialize_grads=True, autograd itself gives zeros for a parameter
    that the term does not depend on). reached[term] is the set of parameter names that
    the term's graph reaches, found independently by walking the graph from the term's
    scalar back to the parameters (`reachable_parameters`). The ELBO's gradient is
    grads["log_px_given_z"] - grads["kl_to_prior"].
    """

    grads: dict[str, dict[str, torch.Tensor]]
    reached: dict[str, set[str]]

    def layer_norms(self, term: str) -> dict[str, float]:
        """The Euclidean norm of the term's gradient over each layer's parameters
        (weight and bias together), keyed by module name, e.g. "decoder.net.2"."""
        return layer_norms(self.grads[term])


def layer_norms(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer gradient norms: sqrt of the summed squares of the layer's parameters' grads."""
    squares: dict[str, float] = {}
    for name, g in grads.items():
        layer = name.rsplit(".", 1)[0]  # "decoder.net.2.weight" -> "decoder.net.2"
        squares[layer] = squares.get(layer, 0.0) + float(g.double().pow(2).sum())
    return {layer: s ** 0.5 for layer, s in squares.items()}


def term_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   detach_z: bool = False) -> TermGradients:
    """Gradients of mean log_px_given_z, mean kl_to_prior and mean ELBO over the batch x,
    each with respect to every parameter of the model, all at the same noise eps.

    eps (S, B, z_dim) defaults to one draw from `generator`. The terms are differentiated
    separately with torch.autograd.grad (no .grad attributes are touched), so the
    gradient of the ELBO can be checked to be their difference.
    """
    check_input(model, x)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    n_samples = 1 if eps is None else len(eps)
    terms = elbo(model, x, n_samples, generator, validate=False, eps=eps, detach_z=detach_z)
    grads: dict[str, dict[str, torch.Tensor]] = {}
    reached: dict[str, set[str]] = {}
    for i, term in enumerate(TERMS):
        scalar = getattr(terms, term).mean()
        reached[term] = reachable_parameters(scalar, dict(zip(names, params)))
        got = torch.autograd.grad(scalar, params, retain_graph=i < len(TERMS) - 1,
                                  allow_unused=True, materialize_grads=True)
        grads[term] = dict(zip(names, got))
    return TermGradients(grads, reached)


def reachable_parameters(scalar: torch.Tensor, named_params: dict[str, torch.Tensor]
                         ) -> set[str]:
    """The names of the parameters that `scalar` depends on through its autograd graph:
    a walk from scalar.grad_fn along next_functions to the leaves (AccumulateGrad nodes),
    collecting the leaf tensors met. Independent of any gradient value: a parameter is
    listed when a path exists, even if the gradient along it happens to be zero."""
    by_id = {id(p): n for n, p in named_params.items()}
    found: set[str] = set()
    # node objects are made afresh on each access and freed when dropped, so an id can be
    # reused by another node: keep every visited node alive for the walk
    seen: dict[int, object] = {}
    stack = [scalar.grad_fn] if scalar.grad_fn is not None else []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen[id(fn)] = fn
        leaf = getattr(fn, "variable", None)  # AccumulateGrad holds its leaf tensor
        if leaf is not None and id(leaf) in by_id:
            found.add(by_id[id(leaf)])
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


class HeadGradients(NamedTuple):
    """What the backward pass of loss = -mean ELBO delivers to the encoder's two heads,
    and the pieces it is made of (see `head_gradients`); all (B, z_dim) except grad_z."""

    grad_mean: torch.Tensor  # d loss / d q_mean, by autograd through the whole graph
    grad_log_var: torch.Tensor  # d loss / d q_log_var, likewise
    grad_z: torch.Tensor  # d loss / d z from the decoder side alone, (S, B, z_dim)
    q_mean: torch.Tensor
    q_log_var: torch.Tensor
    eps: torch.Tensor


def head_gradients(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> HeadGradients:
    """The gradient of loss = -mean over the batch of the ELBO (at noise eps) with respect
    to the encoder's outputs q_mean and q_log_var, and, separately, the gradient with
    respect to z of the reconstruction part of the loss, computed with z cut loose as a
    leaf (so only the decoder is differentiated).

    By the chain rule through z = q_mean + exp(q_log_var / 2) * eps and the closed-form
    KL, grad_mean = sum_s grad_z + q_mean / B and
    grad_log_var = sum_s grad_z * eps * exp(q_log_var / 2) / 2 + (exp(q_log_var) - 1) / (2B):
    the encoder receives the decoder's message about z plus the KL's own short path.
    """
    check_input(model, x)
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, len(eps), eps=eps)
    loss = -(log_px_given_z(model, x, z).mean(0) - kl_to_prior(q_mean, q_log_var)).mean()
    grad_mean, grad_log_var = torch.autograd.grad(loss, [q_mean, q_log_var])
    z_leaf = z.detach().requires_grad_(True)
    (grad_z,) = torch.autograd.grad(-log_px_given_z(model, x, z_leaf).mean(0).mean(), z_leaf)
    return HeadGradients(grad_mean, grad_log_var, grad_z, q_mean.detach(),
                         q_log_var.detach(), eps)


def recon_encoder_gradient_via_z(model: VAE, x: torch.Tensor, eps: torch.Tensor
                                 ) -> dict[str, torch.Tensor]:
    """The reconstruction term's gradient on the encoder's parameters, computed in two
    stages: g = d(mean log p(x|z)) / dz with z a leaf (the decoder alone), then the
    vector-Jacobian product g^T dz/dphi through z = q_mean + sigma * eps (the encoder
    alone). Equal to term_gradients' direct result exactly when z is the reconstruction
    term's only path into the encoder."""
    check_input(model, x)
    names, params = zip(*[(n, p) for n, p in model.named_parameters()
                          if n.startswith("encoder.") and p.requires_grad])
    q_mean, q_log_var = model.encoder(x)
    z = reparameterize(q_mean, q_log_var, len(eps), eps=eps)
    z_leaf = z.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(log_px_given_z(model, x, z_leaf).mean(0).mean(), z_leaf)
    got = torch.autograd.grad(z, params, grad_outputs=g, allow_unused=True,
                              materialize_grads=True)
    return dict(zip(names, got))


class _Loss(torch.nn.Module):
    """-mean ELBO of `vae` at fixed noise eps, as a module, so torch.func can call it with
    its parameters swapped for others (names carry the prefix "vae.")."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return -elbo(self.vae, x, len(eps), validate=False, eps=eps).elbo.mean()


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


def group_norm(grads: dict[str, torch.Tensor], prefix: str) -> float:
    """The norm of the gradient over all parameters whose name starts with `prefix`
    ("encoder." or "decoder.")."""
    return sum(float(g.double().pow(2).sum()) for n, g in grads.items()
               if n.startswith(prefix)) ** 0.5


def record_backward_order(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> list[str]:
    """The names of the model's leaf modules in the order the backward pass reaches them.

    A module is "reached" when the gradient with respect to its output has been computed
    (a tensor hook on the output, registered by a forward hook while loss_fn() builds the
    graph). loss_fn must run the model's forward pass and return a scalar; its backward
    pass is run here (gradients accumulate in .grad as usual). Each module is listed
    once, at its first arrival.
    """
    order: list[str] = []
    handles = []

    def forward_hook(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: order.append(name) if name not in order
                                     else None)
        return hook

    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(forward_hook(name)))
    try:
        loss = loss_fn()
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    return order


# ---- the score-function estimator ----------------------------------------------------

ESTIMATORS = ("reparam", "score", "score_loo")


def encoder_gradient(model: VAE, x: torch.Tensor, n_samples: int, estimator: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One estimate of the gradient of the batch mean of E_q[log p(x|z)] with respect to the
    encoder's parameters, flattened to a vector, from n_samples draws z ~ q(z|x) per example.

    "reparam":    mean over draws of grad_phi log p(x | q_mean + sigma * eps).
    "score":      mean over draws of log p(x|z) * grad_phi log q(z|x), z held fixed
                  (the score-function or REINFORCE estimator, Williams 1992).
    "score_loo":  the same with a baseline: log p(x|z_s) minus the mean of log p(x|z) over
                  the other draws of the same example (leave-one-out; n_samples >= 2).
                  The baseline does not depend on z_s, so the estimator stays unbiased.
    All three are unbiased for the same vector; they differ in variance.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "score_loo" and n_samples < 2:
        raise ValueError("the leave-one-out baseline needs n_samples >= 2")
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    q_mean, q_log_var = model.encoder(x)  # (B, z_dim)
    if estimator == "reparam":
        z = reparameterize(q_mean, q_log_var, n_samples, generator)  # (S, B, z_dim)
        surrogate = log_px_given_z(model, x, z).mean()
    else:
        with torch.no_grad():
            z = reparameterize(q_mean, q_log_var, n_samples, generator)
            f = log_px_given_z(model, x, z)  # (S, B)
            if estimator == "score_loo":
                f = f - (f.sum(0, keepdim=True) - f) / (n_samples - 1)
        log_q = log_diag_normal(z, q_mean, q_log_var)  # (S, B), differentiable in phi only
        surrogate = (f * log_q).mean()
    grads = torch.autograd.grad(surrogate, params)
    return torch.cat([g.reshape(-1) for g in grads])


def estimator_variance(model: VAE, x: torch.Tensor, n_samples: int, estimator: str,
                       n_repeats: int, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, float]:
    """(mean, total variance) over n_repeats independent estimates: the mean vector of the
    estimates and the trace of their covariance (sum over parameters of the variance)."""
    estimates = torch.stack([encoder_gradient(model, x, n_samples, estimator, generator)
                             for _ in range(n_repeats)]).double()  # (R, P)
    return estimates.mean(0), float(estimates.var(0).sum())


# ---- independent checks of a gradient -------------------------------------------------

def finite_difference(model: VAE, x: torch.Tensor, eps: torch.Tensor, term: str, name: str,
                      index: tuple[int, ...], h: float = 1e-6) -> float:
    """The central difference (f(w + h) - f(w - h)) / 2h of the batch mean of one term
    (one of TERMS) of `vaetut.elbo` at the noise eps with respect to one entry `index` of
    the parameter `name`, all else fixed: a derivative that uses no autograd.

    Use a float64 model (float32 round-off swamps the difference at small h). The entry
    is restored afterwards.
    """
    if term not in TERMS:
        raise ValueError(f"term must be one of {TERMS}, got {term!r}")
    param = dict(model.named_parameters())[name]
    values = []
    with torch.no_grad():
        old = param[index].item()
        try:
            for w in (old + h, old - h):
                param[index] = w
                terms = elbo(model, x, len(eps), validate=False, eps=eps)
                values.append(float(getattr(terms, term).mean()))
        finally:
            param[index] = old
    return (values[0] - values[1]) / (2 * h)


def projection_shares(parts: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, float]:
    """How much of `total` each of `parts` (tensors that add up to it) accounts for along
    total's own direction: <part, total> / |total|^2. The shares add up to 1 when the
    parts add up to total; a part orthogonal to total gets 0, one against it a negative
    share. (A ratio of norms, |part| / |total|, is not a share: it ignores direction.)"""
    t = total.double().reshape(-1)
    return {k: float(p.double().reshape(-1) @ t / (t @ t)) for k, p in parts.items()}


def adam_first_step(grad: torch.Tensor, lr: float, eps: float = 1e-8) -> torch.Tensor:
    """The change of a parameter in Adam's first step from zero moments (Kingma and Ba
    2015): after bias correction m_hat = g and v_hat = g^2, so the step is
    -lr * g / (|g| + eps), about -lr * sign(g) wherever |g| >> eps. Multiplying the loss
    by a constant c gives -lr * g / (|g| + eps / c): only entries with |g| near eps / c
    step differently."""
    return -lr * grad / (grad.abs() + eps)


# ---- a Monte Carlo KL and sticking the landing (Roeder, Wu and Duvenaud 2017) ----------

class MCKLGradients(NamedTuple):
    """n_repeats independent one-draw estimates of the gradient of the batch-mean ELBO
    with respect to the encoder's parameters, each (n_repeats, P) in float64."""

    full: torch.Tensor  # all three parts (`elbo_mc_kl`)
    stl: torch.Tensor  # the score term dropped (`elbo_mc_kl(..., stick_the_landing=True)`)
    score: torch.Tensor  # the dropped term alone: -grad_phi mean log q(z|x), z fixed


def mc_kl_encoder_gradients(model: VAE, x: torch.Tensor, n_repeats: int,
                            generator: torch.Generator | None = None,
                            n_samples: int = 1) -> MCKLGradients:
    """For each of n_repeats fresh eps (n_samples draws per example): the encoder's
    gradient of the Monte Carlo-KL ELBO in full, with sticking the landing, and the score
    term that sticking the landing drops, computed on its own (so full = stl + score is a
    check, not a definition)."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    weight = next(model.parameters())

    def flat(scalar):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params)]).double()

    rows: dict[str, list[torch.Tensor]] = {"full": [], "stl": [], "score": []}
    for _ in range(n_repeats):
        eps = draw_eps((n_samples, len(x), model.z_dim), generator, weight.dtype, weight.device)
        rows["full"].append(flat(elbo_mc_kl(model, x, n_samples, eps=eps).elbo.mean()))
        rows["stl"].append(flat(elbo_mc_kl(model, x, n_samples, eps=eps,
                                           stick_the_landing=True).elbo.mean()))
        q_mean, q_log_var = model.encoder(x)
        z = reparameterize(q_mean, q_log_var, n_samples, eps=eps).detach()
        rows["score"].append(flat(-log_diag_normal(z, q_mean, q_log_var).mean(0).mean()))
    return MCKLGradients(*(torch.stack(rows[k]) for k in MCKLGradients._fields))


def mean_to_noise(estimates: torch.Tensor) -> float:
    """|mean|^2 of n independent estimates (rows) divided by what noise alone gives, the
    trace of their covariance over n: about 1 when the estimates' expectation is zero,
    much larger when it is not (a squared signal-to-noise ratio of the average)."""
    n = len(estimates)
    return float(estimates.mean(0).pow(2).sum() / (estimates.var(0).sum() / n))


def vae_with_exact_posterior(model: LinearGaussian) -> VAE:
    """A float64 VAE equal to a linear-Gaussian model whose encoder outputs its exact
    posterior: decoder p(x|z) = N(W z + b, noise_var I), linear encoder with
    mean M^{-1} W^T (x - b) and constant log-variance log diag(noise_var M^{-1}),
    M = W^T W + noise_var I. The posterior covariance is diagonal only when W^T W is,
    as for `LinearGaussian.from_pca`'s W; otherwise ValueError."""
    W, b, noise_var = (t.detach().double() for t in (model.W, model.b, model.noise_var))
    d, k = W.shape
    m = W.T @ W + noise_var * torch.eye(k, dtype=torch.float64)
    off = m - torch.diag(m.diagonal())
    if off.abs().max() > 1e-10 * m.diagonal().abs().max():
        raise ValueError("W^T W is not diagonal, so the exact posterior is not a diagonal "
                         "Gaussian that the VAE's encoder could output")
    m_inv = torch.diag(1.0 / m.diagonal())
    vae = VAE(d, k, (), "gaussian").double()
    with torch.no_grad():
        vae.encoder.mean.weight.copy_(m_inv @ W.T)
        vae.encoder.mean.bias.copy_(-(m_inv @ W.T) @ b)
        vae.encoder.log_var.weight.zero_()
        vae.encoder.log_var.bias.copy_((noise_var * m_inv.diagonal()).log())
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
        vae.decoder.log_var.fill_(float(noise_var.log()))
    return vae

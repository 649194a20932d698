"""The VAE: an encoder q_phi(z|x), a decoder p_theta(x|z) and the prior p(z) = N(0, I).

Kingma and Welling (2013), "Auto-Encoding Variational Bayes". The encoder and the
decoder are separate modules so that the book can ask which of them a gradient reaches.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from .checks import check_count
from .distributions import draw_eps

LIKELIHOODS = ("bernoulli", "gaussian")


def check_architecture(x_dim, z_dim, hidden, likelihood=None) -> tuple[int, ...]:
    """Raise ValueError naming the argument unless x_dim and z_dim are positive ints,
    hidden a sequence of positive ints and likelihood one of LIKELIHOODS (when given);
    return hidden as a tuple."""
    check_count("x_dim", x_dim)
    check_count("z_dim", z_dim)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a sequence of positive ints such as (128,) or "
                         f"(256, 128), got {hidden!r}")
    hidden = tuple(hidden)
    for i, width in enumerate(hidden):
        check_count(f"hidden[{i}]", width)
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return hidden


def check_min_log_var(value, name: str = "min_log_var") -> None:
    """Raise ValueError naming `name` unless value is None or a finite real number."""
    if value is None:
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be None or a finite float, got {value!r}")


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> (q_mean, q_log_var): the diagonal Gaussian
    q_phi(z|x) = N(q_mean, diag(exp(q_log_var)))."""

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        hidden = check_architecture(x_dim, z_dim, hidden)
        self.body = _mlp([x_dim, *hidden])
        self.act = nn.ReLU() if hidden else nn.Identity()
        width = hidden[-1] if hidden else x_dim
        self.mean = nn.Linear(width, z_dim)
        self.log_var = nn.Linear(width, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.body(x))  # (B, hidden[-1])
        return self.mean(h), self.log_var(h)  # (B, z_dim) each


class Decoder(nn.Module):
    """z -> parameters of p_theta(x|z), one per pixel.

    Bernoulli: the logits of each pixel. Gaussian: the mean of each pixel; the
    per-pixel log-variance is a learned parameter shared by all z (`self.log_var`).
    `min_log_var` (Gaussian only; default None, no floor) floors the log-variance that
    the likelihood uses, see `pixel_log_var`; set it here or as an attribute afterwards.
    """

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int], likelihood: str,
                 min_log_var: float | None = None):
        super().__init__()
        hidden = check_architecture(x_dim, z_dim, hidden, likelihood)
        self.likelihood = likelihood
        self.net = _mlp([z_dim, *reversed(hidden), x_dim])
        if likelihood == "gaussian":
            self.log_var = nn.Parameter(torch.zeros(x_dim))
        self.min_log_var = min_log_var

    def pixel_log_var(self) -> torch.Tensor:
        """The Gaussian per-pixel log-variance the likelihood uses: `log_var` itself, or,
        with `min_log_var` set, min_log_var + softplus(log_var - min_log_var), which never
        falls below the floor and keeps a gradient everywhere. A learned variance on
        discrete pixels can otherwise shrink without bound."""
        if self.min_log_var is None:
            return self.log_var
        return self.min_log_var + nn.functional.softplus(self.log_var - self.min_log_var)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (..., x_dim)


class VAE(nn.Module):
    """A variational autoencoder with a diagonal Gaussian q(z|x) and prior N(0, I).

    Args:
        x_dim: number of pixels of a flattened input.
        z_dim: dimension of the latent z.
        hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        likelihood: "bernoulli" (binary or [0, 1] pixels) or "gaussian".
        min_log_var: the Gaussian decoder's variance floor (see `Decoder`); None: none.

    `config` holds all of these: `VAE(**model.config)` builds the same architecture.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (128,),
                 likelihood: str = "bernoulli", min_log_var: float | None = None):
        super().__init__()
        hidden = check_architecture(x_dim, z_dim, hidden, likelihood)
        check_min_log_var(min_log_var)
        self._hidden = list(hidden)
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self.encoder = Encoder(x_dim, z_dim, hidden)
        self.decoder = Decoder(z_dim, x_dim, hidden, likelihood, min_log_var)

    @property
    def config(self) -> dict:
        """Everything that defines the model: what `VAE(**config)` rebuilds, and what a
        checkpoint stores. `min_log_var` (the Gaussian decoder's variance floor, read from
        `decoder.min_log_var`, which may be set after construction) appears only when set."""
        config = {"x_dim": self.x_dim, "z_dim": self.z_dim, "hidden": list(self._hidden),
                  "likelihood": self.likelihood}
        floor = self.decoder.min_log_var
        if floor is not None:
            check_min_log_var(floor, "decoder.min_log_var")
            config["min_log_var"] = float(floor)
        return config

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's q_mean and q_log_var for a batch x of shape (B, x_dim)."""
        return self.encoder(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image at z = q_mean(x): E[x | z] under p(x|z)."""
        q_mean, _ = self.encoder(x)
        return self.mean_image(q_mean)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of the decoder at n draws z ~ p(z) = N(0, I)."""
        device = next(self.parameters()).device
        z = draw_eps((n, self.z_dim), generator, device=device)  # z ~ p(z) = N(0, I)
        return self.mean_image(z)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]: sigmoid of the logits (Bernoulli) or the mean (Gaussian)."""
        params = self.decoder(z)
        return torch.sigmoid(params) if self.likelihood == "bernoulli" else params

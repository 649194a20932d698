"""Figures for the exact model of chapter 1 (vaetut.exact). Each function draws on a given
Axes and returns it, so a notebook cell stays a few lines of plotting."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch
from torch.distributions import MultivariateNormal


def gaussian_contours(ax: plt.Axes, mean: torch.Tensor, cov: torch.Tensor,
                      extent: Sequence[float], levels: int = 6, resolution: int = 200,
                      **contour_kwargs) -> plt.Axes:
    """Contour lines of the 2-d density N(mean, cov) over extent = (x0, x1, y0, y1)."""
    mean, cov = mean.detach().double().reshape(2), cov.detach().double().reshape(2, 2)
    x0, x1, y0, y1 = extent
    g1, g2 = torch.meshgrid(torch.linspace(x0, x1, resolution, dtype=torch.float64),
                            torch.linspace(y0, y1, resolution, dtype=torch.float64), indexing="xy")
    density = MultivariateNormal(mean, cov).log_prob(torch.stack([g1, g2], -1)).exp()
    ax.contour(g1.numpy(), g2.numpy(), density.numpy(), levels=levels, **contour_kwargs)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    return ax


def bound_and_gap(ax: plt.Axes, t: torch.Tensor, log_px: torch.Tensor, elbo: torch.Tensor,
                  kl: torch.Tensor, xlabel: str) -> plt.Axes:
    """log p(x) (flat), the ELBO below it, and KL(q || p(z|x)) stacked on the ELBO: the
    ELBO + KL curve is drawn over log p(x) to show that they coincide."""
    t, log_px, elbo, kl = (v.detach().double().numpy() for v in (t, log_px, elbo, kl))
    ax.fill_between(t, elbo, elbo + kl, color="tab:orange", alpha=0.3,
                    label=r"KL$(q(z|x)\,\|\,p(z|x))$")
    ax.plot(t, elbo, color="tab:blue", label="ELBO")
    ax.plot(t, log_px, color="black", lw=3, alpha=0.4, label=r"$\log p(x)$")
    ax.plot(t, elbo + kl, color="black", ls=":", label="ELBO + KL")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("nats")
    return ax

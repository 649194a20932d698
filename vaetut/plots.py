"""Figures the chapters share. Each function draws on a given Axes (or makes one) and
returns it, so a notebook cell stays one line of plotting."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

from .train import History


def image_grid(images: torch.Tensor, image_shape: Sequence[int], n_cols: int = 10,
               ax: plt.Axes | None = None, title: str | None = None) -> plt.Axes:
    """Draw flattened images (N, H*W) in [0, 1] as one grey-scale mosaic, n_cols wide."""
    images = images.detach().float().cpu().reshape(-1, *image_shape)
    n, (h, w) = len(images), image_shape
    n_rows = -(-n // n_cols)
    canvas = torch.ones(n_rows * (h + 1) - 1, n_cols * (w + 1) - 1)
    for i, img in enumerate(images):
        r, c = divmod(i, n_cols)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    ax = ax or plt.gca()
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def learning_curves(history: History, axes: Sequence[plt.Axes] | None = None) -> Sequence[plt.Axes]:
    """Three panels over epochs: ELBO, reconstruction term, KL to the prior (train and test)."""
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    epochs = history["epoch"]
    labels = {"elbo": "ELBO", "log_px_given_z": r"$E_q[\log p(x|z)]$",
              "kl_to_prior": r"KL$(q(z|x)\,\|\,p(z))$"}
    for ax, (key, label) in zip(axes, labels.items()):
        for split, style in (("train", "-"), ("test", "--")):
            column = f"{split}_{key}"
            if history.records and column in history.records[0]:
                ax.plot(epochs, history[column], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} (nats)")
        ax.legend()
    plt.tight_layout()
    return axes

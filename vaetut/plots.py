"""Figures the chapters share. Each function draws on a given Axes (or makes one) and
returns it, so a notebook cell stays one line of plotting. `book_style()` sets the one
figure style of the book (resolution and font sizes for the HTML page)."""
from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import torch

# The book's figure style (see `book_style`). The content column is 800 pixels wide at a
# 1280-pixel window and about 930 at most; at 200 dpi a figure 4.7 inches wide or more has
# at least that many pixels, so the browser only ever shrinks a figure (sharp, also on a
# high-density screen) and `make check-html` passes. What the reader sees of a font is its
# size times column / figure width: 11 points in a 6.4-inch figure show as about 19 pixels,
# so keep figures at most about 9 inches wide (two panels side by side, not three).
BOOK_STYLE = {
    "figure.dpi": 200,          # the inline backend renders at the figure's dpi
    "savefig.dpi": 200,         # fig.savefig(...) without a dpi
    "figure.figsize": (6.4, 4.0),
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 12,
    "lines.linewidth": 1.8,
    "axes.grid": False,
}


def book_style() -> None:
    """Apply the book's figure style (`BOOK_STYLE`) to matplotlib's rcParams.

    Call it once at the top of a notebook (``vaetut.plots.book_style()``): every figure
    after it is rendered at 200 dpi with fonts sized to be read at the page's width. It
    returns nothing, so as a cell's last line it prints nothing. Use
    ``with matplotlib.rc_context(vaetut.plots.BOOK_STYLE):`` to apply it to a block only.
    """
    mpl.rcParams.update(BOOK_STYLE)


def image_grid(images: torch.Tensor, image_shape: Sequence[int], n_cols: int = 10,
               ax: plt.Axes | None = None, title: str | None = None,
               background: float = 0.0) -> plt.Axes:
    """Draw flattened images in [0, 1] as one grey-scale mosaic, `n_cols` wide.

    Pixel value 0 is drawn white and 1 black (colour map ``gray_r``). The images are
    separated by one pixel of `background`, as are the empty slots of the last row, so
    the gaps read as the digits' own background, not as bars.

    Parameters
    ----------
    images : torch.Tensor
        Shape (N, H*W), values in [0, 1].
    image_shape : sequence of int
        (H, W) of one image.
    n_cols : int
        Images per row.
    ax : matplotlib.axes.Axes, optional
        Where to draw; by default the current Axes.
    title : str, optional
        Title above the mosaic.
    background : float
        Value of the separators and empty slots (default 0, white like the digits' background).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on; ``ax.images[0].get_array()`` is the mosaic.
    """
    images = images.detach().float().cpu().reshape(-1, *image_shape)
    n, (h, w) = len(images), image_shape
    n_rows = -(-n // n_cols)
    canvas = torch.full((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1), float(background))
    for i, img in enumerate(images):
        r, c = divmod(i, n_cols)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    ax = ax or plt.gca()
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def image_rows(rows: dict[str, torch.Tensor], image_shape: Sequence[int], n_cols: int = 10,
               width: float = 6.0) -> plt.Figure:
    """One titled mosaic per entry of `rows` (title -> images), stacked in one figure.

    Each row's height is chosen from its mosaic's aspect ratio plus room for its title,
    and the figure uses the constrained layout, so a title never touches the row above.

    Parameters
    ----------
    rows : dict
        Title of each row and its flattened images (N, H*W) in [0, 1], top to bottom.
    image_shape : sequence of int
        (H, W) of one image.
    n_cols : int
        Images per mosaic row.
    width : float
        Figure width in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; its Axes are ``fig.axes``, in the order of `rows`.
    """
    h, w = image_shape
    heights = []
    for images in rows.values():
        n_rows = -(-len(images.reshape(-1, h * w)) // n_cols)
        heights.append((n_rows * (h + 1) - 1) / (n_cols * (w + 1) - 1))
    title_in = 0.35  # a title of the book's font size, with its padding
    fig = plt.figure(figsize=(width, sum(width * r + title_in for r in heights)),
                     layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, images) in zip(axes, rows.items()):
        image_grid(images, image_shape, n_cols=n_cols, ax=ax, title=title)
    return fig


def learning_curves(history, axes: Sequence[plt.Axes] | None = None) -> Sequence[plt.Axes]:
    """Three panels over epochs: ELBO, reconstruction term, KL to the prior (train and test).

    `history` maps a column name to its values by epoch (`fit`'s History does).
    """
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


def manifold_z(n: int = 15, quantiles: tuple[float, float] = (0.05, 0.95)) -> torch.Tensor:
    """The (n*n, 2) grid of latent values that `manifold_grid` decodes, row by row.

    Each axis takes the standard normal quantiles at n evenly spaced probabilities in
    `quantiles`, so the grid covers the prior p(z) = N(0, I) evenly in probability.
    Row r, column c of the grid holds z = (z1[c], z2[n-1-r]): z1 grows to the right and
    z2 grows upwards, as on the axes of a scatter plot.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    low, high = quantiles
    if not 0 < low < high < 1:
        raise ValueError(f"quantiles must satisfy 0 < low < high < 1, got {quantiles!r}")
    values = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(low, high, n))
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")  # (n, n) each
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)  # (n*n, 2)


@torch.no_grad()
def manifold_grid(model, image_shape: Sequence[int], n: int = 15,
                  quantiles: tuple[float, float] = (0.05, 0.95), ax: plt.Axes | None = None,
                  title: str | None = None) -> plt.Axes:
    """Decode the grid `manifold_z(n, quantiles)` of a model with a 2-d latent and draw
    the mean images E[x|z] as an n x n mosaic (the learned manifold)."""
    if model.z_dim != 2:
        raise ValueError(f"manifold_grid needs a model with z_dim == 2, got {model.z_dim}")
    device = next(model.parameters()).device
    images = model.mean_image(manifold_z(n, quantiles).to(device))  # (n*n, x_dim)
    return image_grid(images, image_shape, n_cols=n, ax=ax, title=title)


def latent_scatter(z: torch.Tensor, labels: torch.Tensor, ax: plt.Axes | None = None,
                   title: str | None = None, cmap: str = "tab10", s: float = 8.0) -> plt.Axes:
    """Scatter 2-d latent codes z (N, 2), coloured by integer labels (N,), with a legend."""
    z = z.detach().float().cpu()
    labels = labels.detach().cpu()
    if z.dim() != 2 or z.shape[1] != 2:
        raise ValueError(f"z must have shape (N, 2), got {tuple(z.shape)}")
    if labels.shape != (len(z),):
        raise ValueError(f"labels must have shape ({len(z)},), got {tuple(labels.shape)}")
    ax = ax or plt.gca()
    colours = plt.get_cmap(cmap)
    for i, label in enumerate(labels.unique().tolist()):
        keep = labels == label
        ax.scatter(z[keep, 0].numpy(), z[keep, 1].numpy(), s=s, color=colours(i % colours.N),
                   label=str(label))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.legend(title="label", fontsize="small", markerscale=2, loc="center left",
              bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title)
    return ax

"""The book's figures. Each function draws on a given Axes (or makes one) and
returns it, so a notebook cell stays one line of plotting. `book_style()` sets the one
figure style of the book (resolution and font sizes for the HTML page).

Images and training: `image_grid`, `image_rows`, `learning_curves`, `manifold_grid`,
`latent_scatter`. The exact model: `gaussian_contours`, `bound_and_gap`, and a climb of the
ELBO along one decoder parameter, `draw_climb`. Gradients: `draw_graph`, the computation
graph of a VAE's loss with the order the backward pass reaches its modules."""
from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import torch
from torch.distributions import MultivariateNormal

from . import em
from .exact import DTYPE, LinearGaussian

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
        _, axes = plt.subplots(1, 3, figsize=(8.3, 3.0))
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


# ----- the exact model ------------------------------------------------------------------
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


def draw_climb(ax: plt.Axes | None, model: LinearGaussian, x: torch.Tensor, climb: em.ClimbHistory,
               scales: torch.Tensor, curves_at: list[int], title: str = ""):
    """log p(x) against s (thick grey), the ELBO curve of the q of each climb point listed
    in `curves_at` (thin, dashed), and the climb's path: for up to 20 points, dots joined by
    arrows (vertical for a step in q, along the bound for a step in s); for more, a line
    with a dot every 10 steps."""
    ax = ax or plt.gca()
    x = x.to(DTYPE)
    log_px, _ = em.bound_slice(model, x, scales, *climb.qs[0])
    ax.plot(scales.numpy(), log_px.numpy(), color="black", lw=3, alpha=0.45,
            label=r"$\log p_\theta(x)$")
    for j, i in enumerate(curves_at):
        _, elbo = em.bound_slice(model, x, scales, *climb.qs[i])
        ax.plot(scales.numpy(), elbo.numpy(), ls="--", lw=1,
                color=plt.cm.viridis(j / max(1, len(curves_at))), label=f"ELBO, q of step {i}")
    if len(climb.s) <= 20:  # a few exact steps: one arrow each
        ax.plot(climb.s, climb.elbo, "o", ms=3, color="tab:red", zorder=3)
        for i in range(1, len(climb.s)):
            ax.annotate("", xy=(climb.s[i], climb.elbo[i]),
                        xytext=(climb.s[i - 1], climb.elbo[i - 1]),
                        arrowprops=dict(arrowstyle="->", color="tab:red", lw=1, shrinkA=0,
                                        shrinkB=0))
    else:  # many small steps: the path, with a dot every 10 steps
        ax.plot(climb.s, climb.elbo, "-", color="tab:red", lw=1.2, label="path of the climb")
        ax.plot(climb.s[::10], climb.elbo[::10], "o", ms=3, color="tab:red", zorder=3)
    ax.set_xlabel(r"decoder parameter $s$ (scale of $W$)")
    ax.set_ylabel("nats per digit")
    if title:
        ax.set_title(title)
    return ax


# ----- the graph of the loss ------------------------------------------------------------
_GRAPH_MODULES = {  # the layers of a VAE with one hidden layer: (x, y, kind), drawn "name\nkind"
    # two rows, so that the labels are read at the book's type size in an 8.3-inch figure:
    # the encoder left to right above, the decoder right to left below
    "encoder.body.0": (1.7, 3.0, "Linear"), "encoder.act": (3.9, 3.0, "ReLU"),
    "encoder.mean": (6.2, 3.9, "Linear: $\\mu$"),
    "encoder.log_var": (6.2, 2.1, "Linear: $\\log\\sigma^2$"),
    "decoder.net.0": (9.1, -0.9, "Linear"), "decoder.net.1": (6.9, -0.9, "ReLU"),
    "decoder.net.2": (4.7, -0.9, "Linear: logits"),
}
_GRAPH_QUANTITIES = {  # the tensors between them: (x, y, label)
    "x": (0.0, 3.0, "$x$"), "x_data": (0.7, -0.9, "$x$"),
    "z": (9.1, 3.0, "$z = \\mu + \\sigma\\,\\varepsilon$"),
    "eps": (9.1, 4.4, "$\\varepsilon \\sim N(0, I)$"),
    "recon": (2.5, -0.9, "$\\log p_\\theta(x|z)$"),
    "kl": (4.4, 0.8, "KL$(q_\\phi(z|x)\\,\\|\\,p(z))$"),
    "loss": (1.2, 0.8, "loss = $-$mean ELBO"),
}
_GRAPH_BOXES = {  # name: (x, y, label)
    **{name: (x, y, f"{name}\n{kind}") for name, (x, y, kind) in _GRAPH_MODULES.items()},
    **_GRAPH_QUANTITIES}
_GRAPH_EDGES = [("x", "encoder.body.0"), ("encoder.body.0", "encoder.act"),
                ("encoder.act", "encoder.mean"), ("encoder.act", "encoder.log_var"),
                ("encoder.mean", "z"), ("encoder.log_var", "z"), ("eps", "z"),
                ("z", "decoder.net.0"), ("decoder.net.0", "decoder.net.1"),
                ("decoder.net.1", "decoder.net.2"), ("decoder.net.2", "recon"),
                ("x_data", "recon"), ("encoder.mean", "kl"), ("encoder.log_var", "kl"),
                ("recon", "loss"), ("kl", "loss")]


def draw_graph(order: list[str], ax=None):
    """Draw the computation graph of a one-hidden-layer VAE's loss: boxes for the modules
    and the quantities between them, grey arrows for the forward pass, and on each
    module the step (1, 2, ...) at which `order` (from record_backward_order) says the
    backward pass reached it. Decoder modules are orange, encoder modules blue."""
    ax = ax or plt.gca()
    step = {name: i + 1 for i, name in enumerate(order)}
    texts = {}
    for name, (x, y, label) in _GRAPH_BOXES.items():
        colour = ("#fdd9b5" if name.startswith("decoder") else
                  "#c6dbef" if name.startswith("encoder") else "#eeeeee")
        if name in step:
            label = f"{label}\nstep {step[name]}"
        texts[name] = ax.text(x, y, label, ha="center", va="center", fontsize=10,
                              bbox=dict(boxstyle="round,pad=0.35", fc=colour, ec="0.4"))
    for src, dst in _GRAPH_EDGES:
        (x0, y0, _), (x1, y1, _) = _GRAPH_BOXES[src], _GRAPH_BOXES[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="0.45", shrinkA=1, shrinkB=1,
                                    patchA=texts[src].get_bbox_patch(),
                                    patchB=texts[dst].get_bbox_patch()))
    ax.set_xlim(-0.6, 10.4)
    ax.set_ylim(-1.8, 4.9)
    ax.set_axis_off()
    return ax

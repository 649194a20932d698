"""Plot helpers: the pictures show the numbers they claim to (checked on the drawn data)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

from vaetut import VAE, plots  # noqa: E402
from vaetut.run.train import History  # noqa: E402


class RecordingModel(torch.nn.Module):
    """A stand-in with a 2-d latent whose 'image' of z is (sigmoid(z1), sigmoid(z2)) twice."""

    z_dim = 2

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def mean_image(self, z):
        self.seen = z.clone()
        return torch.sigmoid(torch.cat([z, z], dim=1))  # (N, 4) = a 2x2 image


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tile(canvas, r, c, h, w):
    return canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w]


def test_manifold_z_are_normal_quantiles_with_z2_growing_upwards():
    n, q = 4, (0.1, 0.9)
    z = plots.manifold_z(n, q)
    expected = norm.ppf(np.linspace(*q, n))
    assert z.shape == (n * n, 2)
    grid = z.reshape(n, n, 2).numpy()
    for r in range(n):
        for c in range(n):
            np.testing.assert_allclose(grid[r, c], [expected[c], expected[n - 1 - r]], atol=1e-5)


def test_manifold_grid_decodes_each_z_into_its_tile():
    n = 3
    model = RecordingModel()
    ax = plots.manifold_grid(model, (2, 2), n=n, quantiles=(0.2, 0.8))
    torch.testing.assert_close(model.seen, plots.manifold_z(n, (0.2, 0.8)))
    canvas = ax.images[0].get_array()
    values = norm.ppf(np.linspace(0.2, 0.8, n))
    for r in range(n):
        for c in range(n):
            z1, z2 = values[c], values[n - 1 - r]
            want = 1 / (1 + np.exp(-np.array([[z1, z2], [z1, z2]])))
            np.testing.assert_allclose(tile(canvas, r, c, 2, 2), want, atol=1e-5)


def test_manifold_grid_of_a_real_vae_matches_its_decoder():
    torch.manual_seed(0)
    model = VAE(x_dim=6, z_dim=2, hidden=(5,))
    ax = plots.manifold_grid(model, (2, 3), n=2)
    canvas = ax.images[0].get_array()
    images = model.mean_image(plots.manifold_z(2)).detach()
    for i in range(4):
        r, c = divmod(i, 2)
        np.testing.assert_allclose(tile(canvas, r, c, 2, 3), images[i].reshape(2, 3).numpy(),
                                   atol=1e-6)


@pytest.mark.parametrize("bad", [dict(n=1), dict(quantiles=(0.0, 0.9)), dict(quantiles=(0.6, 0.4))])
def test_manifold_z_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        plots.manifold_z(**bad)


def test_manifold_grid_rejects_a_latent_that_is_not_2d():
    with pytest.raises(ValueError, match="z_dim == 2"):
        plots.manifold_grid(VAE(x_dim=4, z_dim=3, hidden=(5,)), (2, 2))


def test_latent_scatter_draws_every_point_once_coloured_by_label():
    z = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0]])
    labels = torch.tensor([1, 0, 1, 2, 0])
    ax = plots.latent_scatter(z, labels)
    points = {}
    for coll, text in zip(ax.collections, ax.get_legend().get_texts()):
        points[int(text.get_text())] = coll.get_offsets().data
    assert sorted(points) == [0, 1, 2]
    for label, xy in points.items():
        np.testing.assert_allclose(xy, z[labels == label].numpy())
    colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
    assert len(colours) == 3


def test_latent_scatter_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plots.latent_scatter(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        plots.latent_scatter(torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64))


def test_image_grid_places_images_row_by_row():
    images = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4) / 12
    ax = plots.image_grid(images, (2, 2), n_cols=2)
    canvas = ax.images[0].get_array()
    assert canvas.shape == (2 * 3 - 1, 2 * 3 - 1)
    for i in range(3):
        r, c = divmod(i, 2)
        np.testing.assert_allclose(tile(canvas, r, c, 2, 2), images[i].reshape(2, 2).numpy())
    np.testing.assert_allclose(tile(canvas, 1, 1, 2, 2), 0.0)  # the empty slot is background
    np.testing.assert_allclose(canvas[2, :], 0.0)  # the separator row
    np.testing.assert_allclose(canvas[:, 2], 0.0)  # the separator column


def test_learning_curves_plot_train_and_test_columns():
    records = [{"epoch": e, **{f"{s}_{k}": float(e * i + (s == "test"))
                               for s in ("train", "test")
                               for i, k in enumerate(("elbo", "log_px_given_z", "kl_to_prior"), 1)}}
               for e in (1, 2, 3)]
    axes = plots.learning_curves(History(records))
    for ax, key in zip(axes, ("elbo", "log_px_given_z", "kl_to_prior")):
        lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
        assert list(lines) == ["train", "test"]
        np.testing.assert_allclose(lines["train"], [r[f"train_{key}"] for r in records])
        np.testing.assert_allclose(lines["test"], [r[f"test_{key}"] for r in records])


def rendered(fig):
    """The figure as drawn by Agg: an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def test_image_grid_separators_are_drawn_in_the_background_colour():
    # two black 2x2 digits side by side: the mosaic is 2 x 5 pixels, its middle column the gap;
    # an axes that fills the figure and 20 screen pixels per mosaic pixel make each one a block
    fig = plt.figure(figsize=(1.0, 0.4), dpi=100, facecolor="white")
    ax = fig.add_axes([0, 0, 1, 1])
    plots.image_grid(torch.ones(2, 4), (2, 2), n_cols=2, ax=ax)
    pixels = rendered(fig)
    assert pixels.shape == (40, 100, 3)
    white, black = np.array([255, 255, 255]), np.array([0, 0, 0])
    # inner parts of each block, away from the block edges' resampling
    assert (pixels[5:35, 5:35] == black).all() and (pixels[5:35, 65:95] == black).all()
    gap = pixels[5:35, 45:55]
    assert (gap == white).all(), "the separator between two digits must be background (white)"
    # the colour map draws a digit's background (0) white, the same as the separator
    background = plots.image_grid(torch.zeros(2, 4), (2, 2), n_cols=2, ax=ax)
    assert (rendered(fig) == white).all() and background is ax


def test_image_grid_background_can_be_chosen():
    ax = plots.image_grid(torch.zeros(3, 4), (2, 2), n_cols=2, background=0.5)
    canvas = ax.images[0].get_array()
    np.testing.assert_allclose(canvas[2, :], 0.5)
    np.testing.assert_allclose(tile(canvas, 1, 1, 2, 2), 0.5)
    np.testing.assert_allclose(tile(canvas, 0, 0, 2, 2), 0.0)


def test_book_style_sets_the_figure_resolution_and_font_sizes():
    import matplotlib as mpl

    with mpl.rc_context():
        mpl.rcdefaults()
        assert mpl.rcParams["figure.dpi"] == 100  # matplotlib's default, before
        assert plots.book_style() is None  # a notebook cell ending with the call shows nothing
        assert all(mpl.rcParams[k] == (list(v) if isinstance(v, tuple) else v)
                   for k, v in plots.BOOK_STYLE.items())
        assert mpl.rcParams["figure.dpi"] == 200 and mpl.rcParams["savefig.dpi"] == 200
        assert mpl.rcParams["font.size"] == 11 and mpl.rcParams["axes.labelsize"] == 11
        assert mpl.rcParams["legend.fontsize"] == 10
        fig = plt.figure()
        assert fig.dpi == 200
        # a figure of the default size, and one of 4.7 inches, have more pixels across than
        # the content column's 800 (at a 1280-pixel window) to about 930 (wider windows)
        width, _ = fig.get_size_inches() * fig.dpi
        assert width >= 930 and 4.7 * fig.dpi >= 930


def test_image_rows_titles_clear_the_row_above():
    x = torch.rand(10, 64)
    fig = plots.image_rows({"test images": x, "reconstructions": x,
                            "samples from the prior": x[:7]}, (8, 8), n_cols=10)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["test images", "reconstructions",
                                               "samples from the prior"]
    for above, below in zip(axes, axes[1:]):
        title = below.title.get_window_extent(renderer)
        picture = above.images[0].get_window_extent(renderer)
        assert title.y1 < picture.y0, "a row's title overlaps the mosaic above it"
    for ax in axes:  # each title sits above its own mosaic, within the figure
        assert ax.title.get_window_extent(renderer).y0 >= ax.images[0].get_window_extent(renderer).y1
        assert ax.title.get_window_extent(renderer).y1 <= fig.bbox.y1

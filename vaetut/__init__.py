"""vaetut: the small PyTorch package behind the executable VAE book.

Where things are:
    model.py       the VAE: encoder q(z|x), decoder p(x|z), prior N(0, I)
    objective.py   the ELBO and its two terms, the reparameterization, the IWAE bound
    data.py        the digits (default, offline) and MNIST from IDX files
    train.py       fit: the epoch loop, history, evaluation
    steps.py       the training step: eager, whole-step CUDA graph, data-parallel
    checkpoint.py  atomic save, safe load
    resume.py      what defines a run; resuming it from its checkpoint
    device.py      pick_device
    exact.py       probabilistic PCA: log p(x), p(z|x), the exact ELBO and KL (chapter 1)
"""
from . import data, plots
from .run.checkpoint import load_checkpoint, save_checkpoint
from .run.device import pick_device
from .model import VAE
from .objective import ELBO, elbo, iwae_bound, kl_to_prior, log_px_given_z, reparameterize
from .run.train import History, NonFiniteLossError, evaluate, fit

__version__ = "0.1.0"

__all__ = ["VAE", "ELBO", "elbo", "iwae_bound", "kl_to_prior", "log_px_given_z",
           "reparameterize", "fit", "evaluate", "History", "NonFiniteLossError",
           "pick_device", "save_checkpoint", "load_checkpoint", "data", "plots"]
from . import exact  # noqa: E402
from .exact import LinearGaussian  # noqa: E402

__all__ += ["exact", "LinearGaussian"]
from . import bounds, diagnostics  # noqa: E402  (chapters 5 and 6)

__all__ += ["bounds", "diagnostics"]

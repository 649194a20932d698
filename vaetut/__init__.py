"""vaetut: the small PyTorch package behind the executable VAE book.

The teaching core, each idea in one module (read them in this order):
    model.py          the VAE: encoder q(z|x), decoder p(x|z), prior N(0, I)
    distributions.py  the noise and z = mu + sigma * eps, log p(x|z), log p(z), log q(z|x),
                      the KL to the prior (per dimension and summed), the continuous Bernoulli
    objective.py      every objective fit can take: the ELBO, its variants with a path cut
                      or a Monte Carlo KL, IWAE, beta and free bits, KL annealing, wrappers
    checks.py         the checks of arguments and data that the core shares
    data.py           the digits (default, offline) and MNIST from IDX files
    download.py       fetching the MNIST files: mirrors, one deadline, checksums
    files.py          every file written atomically, through the descriptor it created
    exact.py          probabilistic PCA: log p(x), p(z|x), the exact ELBO and KL
    em.py             EM and joint gradient ascent on the exact model, also along one
                      decoder parameter
    gradients.py      where the ELBO's gradient goes: by term, by parameter, by estimator
    bounds.py         the IWAE bound, the best q per example, the inference gap
    diagnostics.py    measurements of collapse: KL per dimension, active units, the rate
    prior.py          a learned Gaussian prior p_psi(z): its KL, and what that term trains
    plots.py          the book's figures

The run machinery, in vaetut/run/ (it imports the core; the core never imports it):
    run/train.py        fit: the epoch loop, History, evaluate
    run/options.py      fit's options and data, checked in one place
    run/state.py        the progress of fit's objects (a KL schedule), saved and restored
    run/steps.py        the training step: eager, whole-step CUDA graph, data-parallel
    run/checkpoint.py   atomic writes, the writer's lock, checked loading
    run/resume.py       what defines a run; resuming it from its checkpoint
    run/distributed.py  torchrun's process group: join, agree, leave
    run/device.py       pick_device
    run/cli.py          `python -m vaetut train` (__main__.py calls it)
"""
import sys as _sys

if _sys.argv[:1] == ["-m"]:  # `python -m vaetut ...` starting: Ctrl-C while torch loads below
    import os as _os        # is one line and exit status 130 (run/cli.py's main takes over)
    import signal as _signal

    def _interrupted_while_starting(*_):
        _os.write(2, b"vaetut: interrupted while starting; nothing was written\n")
        _os._exit(130)

    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

from . import bounds, data, diagnostics, distributions, exact, objective, plots
from .bounds import iwae_bound
from .distributions import kl_to_prior, log_px_given_z, reparameterize
from .exact import LinearGaussian
from .model import VAE
from .objective import ELBO, elbo
from .run.checkpoint import load_checkpoint, save_checkpoint
from .run.device import pick_device
from .run.train import History, NonFiniteLossError, evaluate, fit

__version__ = "0.1.0"

__all__ = ["VAE", "ELBO", "elbo", "iwae_bound", "kl_to_prior", "log_px_given_z",
           "reparameterize", "fit", "evaluate", "History", "NonFiniteLossError",
           "pick_device", "save_checkpoint", "load_checkpoint", "data", "plots", "exact",
           "LinearGaussian", "bounds", "diagnostics", "distributions", "objective"]

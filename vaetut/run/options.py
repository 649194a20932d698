"""fit's options and data, checked in one place before anything trains.

`FitOptions` holds every keyword option of `fit` (train.py); building one checks them all,
in the order fit's signature lists them, and settles what depends on the machine: the
device, whether the run is data-parallel, whether its step is captured in a CUDA graph
and which Adam kernel it uses. `check_fit_data` checks the model and the data. An error
names the argument and what it must be.
"""
from __future__ import annotations

import inspect
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..checks import check_count, check_input, check_positive
from ..model import VAE
from . import distributed as dist_utils
from .checkpoint import check_checkpoint_path
from .device import pick_device

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
INT64_LIMIT = 2**63  # torch indexes, shapes and seeds with int64


def as_python_number(value: Any) -> Any:
    """A NumPy scalar, or a NumPy array or tensor of one element, as the Python int or float
    it holds, so that what fit records and saves is plain data; anything else unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        size = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", 0)
        return value.item() if size == 1 else value
    if isinstance(value, numbers.Integral) and not isinstance(value, int):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    return value


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if not (isinstance(value, bool) or value in choices):
        raise ValueError(f"{name} must be True, False or "
                         + (f"'{choices[0]}'" if len(choices) == 1 else f"one of {choices}")
                         + f", got {value!r}")


def check_seed(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < INT64_LIMIT - 1:
        raise ValueError(f"{name} must be an int in [0, 2**63 - 1), got {value!r}")


def _check_callable(name: str, function: Any, *args: Any, **kwargs: Any) -> None:
    """ValueError naming `name` unless `function` can be called with these arguments (as
    far as its signature tells: a builtin without one is taken at its word)."""
    if not callable(function) or isinstance(function, (str, type)):
        raise ValueError(f"{name} must be a function, got {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        raise ValueError(f"{name} must accept {_call_text(args, kwargs)}, but "
                         f"{getattr(function, '__qualname__', function)!r}{signature} does not "
                         f"({err})") from None


def _call_text(args: tuple, kwargs: dict) -> str:
    return "(" + ", ".join([*args, *(f"{k}={v}" for k, v in kwargs.items())]) + ")"


@dataclass(kw_only=True)
class FitOptions:
    """fit's keyword options (see fit), checked and settled when built. `graphed` and
    `fused` are the choices a CUDA graph and Adam's kernel are made by, `writes_checkpoint`
    whether this process writes the checkpoint (rank 0 alone under torchrun)."""

    epochs: int
    batch_size: int
    lr: float
    device: str | torch.device
    seed: int
    n_samples: int
    progress: bool
    checkpoint: str | os.PathLike | None
    resume: bool
    stochastic_binarization: bool
    objective: Callable
    on_epoch_end: Callable | None
    cuda_graph: bool | str
    fused_adam: bool | str
    check_every: int
    compile: bool | str
    distributed: bool | None
    dist_timeout_s: float

    def __post_init__(self) -> None:
        # NumPy scalars as Python numbers: a np.float64 lr would reach the optimizer's state
        for name in ("epochs", "batch_size", "n_samples", "check_every", "seed"):
            setattr(self, name, as_python_number(getattr(self, name)))
        if isinstance(self.lr, numbers.Real) and not isinstance(self.lr, bool):
            self.lr = float(self.lr)
        for name in ("epochs", "batch_size", "n_samples", "check_every"):
            check_count(name, getattr(self, name))
            if getattr(self, name) >= INT64_LIMIT:
                raise ValueError(f"{name} must be below 2**63 (torch counts in int64), got "
                                 f"{getattr(self, name)!r}")
        check_positive("lr", self.lr)
        check_seed("seed", self.seed)
        _check_choice("fused_adam", self.fused_adam, ("auto",))
        _check_choice("compile", self.compile, COMPILE_MODES)
        _check_choice("cuda_graph", self.cuda_graph, ("auto",))
        for name in ("progress", "resume", "stochastic_binarization"):
            check_flag(name, getattr(self, name))
        _check_callable("objective", self.objective, "model", "x", "n_samples", "generator",
                        validate=False)
        if self.on_epoch_end is not None:
            _check_callable("on_epoch_end", self.on_epoch_end, "epoch", "model", "record")
        check_positive("dist_timeout_s", self.dist_timeout_s)
        self.device = pick_device(self.device)
        self._settle_fast_paths()
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)):
                raise ValueError(f"checkpoint must be a path (str or os.PathLike) or None, got "
                                 f"{type(self.checkpoint).__name__}")
            check_checkpoint_path(self.checkpoint)
        self.writes_checkpoint = self.checkpoint is not None and not (
            self.distributed and dist_utils.env_rank() != 0)

    def _settle_fast_paths(self) -> None:
        """distributed (None: when launched by torchrun), graphed and fused, or a ValueError
        for a combination that cannot run."""
        if self.distributed is None:
            self.distributed = dist_utils.launched_by_torchrun()
        check_flag("distributed", self.distributed)
        if self.distributed and (self.compile or self.check_every > 1
                                 or self.cuda_graph is True):
            raise ValueError("compile, check_every > 1 and cuda_graph=True are single-process "
                             "fast paths; use them with distributed=False")
        self.graphed = use_cuda_graph(self.cuda_graph, self.device, self.distributed,
                                      self.compile, self.on_epoch_end)
        self.fused = use_fused_adam(self.fused_adam, self.device)


def use_fused_adam(fused_adam: bool | str, dev: torch.device) -> bool | None:
    """The `fused` argument of torch.optim.Adam. On the CPU the fused kernel is the fastest
    step (benchmarks/README.md: the plain per-parameter loop cost a third of an epoch);
    on CUDA "auto" keeps torch's default (foreach), which the CUDA graph path captures."""
    if fused_adam == "auto":
        return True if dev.type == "cpu" else None
    return fused_adam or None


def use_cuda_graph(cuda_graph: bool | str, dev: torch.device, distributed: bool,
                   compile: bool | str, on_epoch_end) -> bool:
    """Whether fit captures its step in a CUDA graph: "auto" on CUDA when nothing else
    launches the step (not distributed, not compiled, no callback that could change the
    objective between replays)."""
    if cuda_graph == "auto":
        return (dev.type == "cuda" and not distributed and not compile
                and on_epoch_end is None)
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, but fit runs on {dev}; "
                         "use cuda_graph='auto' or False")
    if cuda_graph and compile:
        raise ValueError("cuda_graph=True and compile are two ways to cut launch overhead; "
                         "choose one")
    return bool(cuda_graph)


def check_fit_data(model: Any, train: Any, test: Any, stochastic_binarization: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ValueError naming the model or the data that fit cannot train with; return the data
    detached (fit trains on their values: data with requires_grad get no .grad)."""
    if not isinstance(model, VAE):
        raise ValueError(f"model must be a vaetut.VAE, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("model's weights are on the meta device, which holds no values: build "
                         "the model on a real device (or call model.to_empty(device=...) and "
                         "initialize it) before training")
    for name, x in (("train", train), ("test", test)):
        if isinstance(x, torch.Tensor) and x.is_meta:
            raise ValueError(f"{name} is a tensor on the meta device, which holds no values: "
                             "fit needs the data themselves")
        if isinstance(x, torch.Tensor) and x.layout != torch.strided:
            raise ValueError(f"{name} is a {x.layout} tensor; fit trains on dense data: pass "
                             f"{name}.to_dense()")
    check_input(model, train, "train")
    if test is not None:
        check_input(model, test, "test")
    if stochastic_binarization and (train.min() < 0 or train.max() > 1):
        raise ValueError("stochastic_binarization=True draws each pixel from Bernoulli(x), so "
                         "train must lie in [0, 1], got values in "
                         f"[{train.min().item():.3g}, {train.max().item():.3g}]")
    return train.detach(), None if test is None else test.detach()

"""Training: `fit` maximizes the ELBO with Adam on data held on the device.

fit checks its arguments, builds the step (vaetut/steps.py: eager, CUDA graph or
data-parallel), then runs the epoch loop: one pass of steps, the epoch's record (train
means, test evaluation), the finiteness check, the checkpoint (vaetut/checkpoint.py,
vaetut/resume.py), the callback.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
import os
from typing import Any, Callable

import torch
from tqdm.std import tqdm  # plain text: no widget needed in notebooks

from .checkpoint import acquire_checkpoint_lock, check_checkpoint_path, save_checkpoint
from ..data import binarize_stochastic
from .device import pick_device
from . import distributed as dist_utils
from ..model import VAE
from ..objective import ELBO, check_count, check_input, elbo
from .resume import object_state, resume as resume_run, run_definition
from .steps import DataParallelSteps, EagerSteps, GraphedSteps, NonFiniteLossError

METRICS = ("elbo", "log_px_given_z", "kl_to_prior")


class History:
    """One record per epoch: train_* and test_* means of each term, in nats per example.

    `history["test_elbo"]` is the column as a list; `history.records` the rows.
    """

    def __init__(self, records: list[dict[str, float]] | None = None):
        self.records = list(records or [])

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"History({len(self)} epochs)"

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the records as a JSON list; NaN and infinite values are written as null
        (JSON has no NaN; `fit` never records one, but a History built by hand may)."""
        records = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                    for k, v in r.items()} for r in self.records]
        with open(path, "w") as f:
            json.dump(records, f, indent=1, allow_nan=False)


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, batch_size: int = 1024, n_samples: int = 1,
             seed: int = 0) -> dict[str, float]:
    """Mean ELBO, log_px_given_z and kl_to_prior over x, with a seeded generator so the
    same model always gets the same numbers. The arguments are checked as `fit`'s are."""
    check_input(model, x, "x")
    check_count("batch_size", batch_size)
    check_count("n_samples", n_samples)
    _check_seed("seed", seed)
    return _evaluate(model, x, batch_size, n_samples, seed)


def _evaluate(model: VAE, x: torch.Tensor, batch_size: int, n_samples: int,
              seed: int) -> dict[str, float]:
    """evaluate without the input checks (fit checks its test data once)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = x.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for xb in x.split(batch_size):
        terms = elbo(model, xb, n_samples, gen, validate=False)
        sums += torch.stack([t.sum() for t in terms]).double()
    model.train(was_training)
    return dict(zip(METRICS, (sums / len(x)).tolist()))


def _check_seed(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63 - 1:
        raise ValueError(f"{name} must be an int in [0, 2**63 - 1), got {value!r}")


def _check_positive_float(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive float, got {value!r}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _holding_checkpoint_lock(fit_function: Callable) -> Callable:
    """fit, with its checkpoint path checked before anything else happens and, in the
    process that writes it (rank 0 under torchrun), the checkpoint's lock held for the
    whole call (vaetut.run.checkpoint.acquire_checkpoint_lock): a second writer is refused
    at once instead of overwriting the first."""
    signature = inspect.signature(fit_function)

    @functools.wraps(fit_function)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        checkpoint, distributed = bound.arguments["checkpoint"], bound.arguments["distributed"]
        if checkpoint is None:
            return fit_function(*args, **kwargs)
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise ValueError(f"checkpoint must be a path (str or os.PathLike) or None, got "
                             f"{type(checkpoint).__name__}")
        check_checkpoint_path(checkpoint)
        if distributed is None:
            distributed = dist_utils.launched_by_torchrun()
        if distributed and dist_utils.env_rank() != 0:  # rank 0 alone writes it
            return fit_function(*args, **kwargs)
        lock = acquire_checkpoint_lock(checkpoint)
        try:
            return fit_function(*args, **kwargs)
        finally:
            lock.release()

    return wrapper


def _checkpoint_note(checkpoint: str | os.PathLike | None, saved_epoch: int | None) -> str:
    """The end of a NonFiniteLossError message: what the checkpoint file holds, naming
    only what exists."""
    if checkpoint is None:
        return ""
    if saved_epoch is not None:
        return f"; {checkpoint!r} holds epoch {saved_epoch}"
    return (f"; nothing was written to {checkpoint!r}"
            + (" (it holds what it held before this call)" if os.path.exists(checkpoint)
               else ""))


def _check_finite_epoch(record: dict[str, Any], model: VAE, epoch: int, lr: float,
                        note: str) -> None:
    """Raise NonFiniteLossError unless every metric of the epoch's record and every weight
    is finite: a step can ruin the model while its loss, tested before it, was finite."""
    bad = [f"{k} is {v}" for k, v in record.items()
           if isinstance(v, float) and not math.isfinite(v)]
    names, params = zip(*model.named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for p in params]).tolist()
    bad += [f"non-finite weights in {name}" for name, ok in zip(names, finite) if not ok]
    if bad:
        raise NonFiniteLossError(
            f"training diverged in epoch {epoch}: {', '.join(bad)} (lr={lr}); nothing of "
            f"epoch {epoch} was recorded, saved or passed to on_epoch_end, and the model is "
            "not usable" + note)


@_holding_checkpoint_lock
def fit(model: VAE, train: torch.Tensor, test: torch.Tensor | None = None, *, epochs: int = 10,
        batch_size: int = 128, lr: float = 1e-3, device: str | torch.device = "auto",
        seed: int = 0, n_samples: int = 1, progress: bool = True,
        checkpoint: str | os.PathLike | None = None, resume: bool = True,
        stochastic_binarization: bool = False,
        objective: Callable[..., ELBO] = elbo,
        on_epoch_end: Callable[[int, VAE, dict], None] | None = None,
        cuda_graph: bool | str = "auto", fused_adam: bool | str = "auto",
        check_every: int = 1,
        compile: bool | str = False, distributed: bool | None = None,
        dist_timeout_s: float = 120.0) -> History:
    """Train `model` by gradient ascent on the mean ELBO of mini-batches; return a History.

    The loss differentiated is minus the batch mean of `objective(model, x, n_samples,
    generator)`. The data are moved to the device once and batched by a seeded
    permutation; one torch.Generator seeded by `seed` drives the permutation, the noise
    and any stochastic binarization, so the same seed gives the same run. The README
    ("Checkpoints and resuming", "fit's fast paths") says what each option guarantees.

    Parameters
    ----------
    model : VAE
        The model to train, in place (moved to the device).
    train : torch.Tensor
        Training data, shape (N, x_dim), of the model's dtype.
    test : torch.Tensor, optional
        Data evaluated after every epoch (the test_* columns of the history).
    epochs : int
        Total epochs; a resumed run trains only those the checkpoint lacks.
    batch_size : int
        Examples per step.
    lr : float
        Adam's learning rate.
    device : str or torch.device
        "auto" (CUDA, then MPS, then CPU), or a device; see `pick_device`.
    seed : int
        Seed of the run's generator.
    n_samples : int
        Draws z ~ q(z|x) per example and step.
    progress : bool
        Show a progress bar (tqdm).
    checkpoint : str or path-like, optional
        File written atomically after every epoch (model, optimizer, generator, history).
    resume : bool
        Continue from an existing `checkpoint` of the same run (another run is refused).
    stochastic_binarization : bool
        Draw fresh binary pixels x ~ Bernoulli(train) every epoch.
    objective : callable
        Per-example objective ``objective(model, x, n_samples, generator)``, default `elbo`.
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, model, record)`` after each epoch.
    cuda_graph : bool or str
        Replay the whole step as a CUDA graph; "auto": on CUDA when nothing changes it.
    fused_adam : bool or str
        Adam's fused kernel, one pass over each parameter ("auto": on the CPU, where it is
        the fastest step; elsewhere torch's default). Equal to the plain Adam loop
        (False) within float rounding (bit for bit in some runs, not in general).
    check_every : int
        Test the loss for NaN/inf every this many steps (results unchanged).
    compile : bool or str
        Compile the objective with torch.compile (True or a mode name).
    distributed : bool, optional
        Data-parallel over processes (None: when launched by torchrun).
    dist_timeout_s : float
        Seconds a process waits for a failed peer before its collective fails.

    Returns
    -------
    History
        One record per epoch: train_* (and test_*) means of elbo, log_px_given_z and
        kl_to_prior, in nats per example.

    Raises
    ------
    ValueError
        A bad argument or input, or a checkpoint of another run (the message says which).
    NonFiniteLossError
        A NaN or infinite loss, metric or weight; nothing of that epoch is recorded or saved.
    """
    epochs, batch_size, lr, n_samples, check_every, seed = _check_fit_arguments(
        epochs=epochs, batch_size=batch_size, lr=lr, n_samples=n_samples,
        check_every=check_every, seed=seed, fused_adam=fused_adam, compile=compile,
        cuda_graph=cuda_graph)
    train, test = _check_fit_data(model, train, test, stochastic_binarization)
    dev = pick_device(device)
    if distributed is None:
        distributed = dist_utils.launched_by_torchrun()
    context = dist_utils.Context()
    if distributed:
        if compile or check_every > 1 or cuda_graph is True:
            raise ValueError("compile, check_every > 1 and cuda_graph=True are single-process "
                             "fast paths; use them with distributed=False")
        context, dev = dist_utils.join(dev, dist_timeout_s)
    graphed = _use_cuda_graph(cuda_graph, dev, distributed, compile, on_epoch_end)
    model.to(dev)
    train = train.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr,
                                 fused=_use_fused_adam(fused_adam, dev), capturable=graphed)
    history, start_epoch, saved_epoch, run = History(), 0, None, None
    stateful = _stateful_objects(objective, on_epoch_end)
    if checkpoint is not None or distributed:
        run = run_definition(lr=lr, seed=seed, batch_size=batch_size, n_samples=n_samples,
                             objective=objective, train=train, test=test,
                             stochastic_binarization=stochastic_binarization)
    if checkpoint is not None and resume and os.path.lexists(checkpoint):
        records, start_epoch = resume_run(checkpoint, model, optimizer, gen, dev, run, epochs,
                                          stateful)
        history, saved_epoch = History(records), start_epoch
    if distributed:  # ranks launched with different settings or data stop here, all of them
        dist_utils.check_same_run(context, {
            **run, "epochs": epochs, "start_epoch": start_epoch, "model": model.config,
            "dtype": str(next(model.parameters()).dtype), "checkpoint": checkpoint and
            os.path.abspath(checkpoint), "resume": bool(resume)})

    if graphed:  # the graphs read the data at one address: the binarization goes there
        x_static = train.clone() if stochastic_binarization else train
        steps = GraphedSteps(model, objective, optimizer, x_static, batch_size, n_samples, gen)
    elif distributed:
        steps = DataParallelSteps(model, objective, optimizer, len(train), batch_size,
                                  n_samples, gen, context)
    else:
        step_objective = objective if not compile else torch.compile(
            objective, dynamic=False, mode=None if compile is True else compile)
        steps = EagerSteps(model, step_objective, optimizer, len(train), batch_size, n_samples,
                           gen, check_every)

    bar = tqdm(total=epochs, initial=start_epoch, disable=not (progress and context.is_main),
               desc="fit", unit="epoch")
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            model.train()
            x_epoch = binarize_stochastic(train, gen) if stochastic_binarization else train
            note = _checkpoint_note(checkpoint, saved_epoch)
            sums = dist_utils.all_reduce_sum(steps.run_epoch(x_epoch, epoch, note), context)
            record = {"epoch": epoch,
                      **{f"train_{k}": v for k, v in zip(METRICS, (sums / len(train)).tolist())}}
            if test is not None:
                record.update({f"test_{k}": v
                               for k, v in _evaluate(model, test, 1024, 1, seed + 1).items()})
            _check_finite_epoch(record, model, epoch, lr, note)
            history.records.append(record)
            if on_epoch_end is not None:  # before the save: what it records is saved too
                on_epoch_end(epoch, model, record)
                _check_callback_record(record, on_epoch_end)
            if checkpoint is not None:
                if context.is_main:
                    save_checkpoint(checkpoint, model, optimizer=optimizer.state_dict(),
                                    generator=gen.get_state(), history=history.records,
                                    epoch=epoch, seed=seed, run=run,
                                    generator_device=gen.device.type,
                                    object_state=_object_states(stateful))
                saved_epoch = epoch
            bar.update(1)
            bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
    finally:
        bar.close()
    return history


def _as_python_number(value: Any) -> Any:
    """A NumPy scalar (or a one-element tensor) as the Python int or float it holds, so
    that what fit records and saves is plain data; anything else unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, int):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # np.float64 is a float
        return value.item()
    return value


def _check_fit_arguments(*, epochs, batch_size, lr, n_samples, check_every, seed, fused_adam,
                         compile, cuda_graph) -> tuple[int, int, float, int, int, int]:
    """ValueError naming the first argument of fit that is not what it must be; return
    epochs, batch_size, lr, n_samples, check_every and seed as Python numbers (NumPy
    scalars converted: a np.float64 lr would reach the optimizer's saved state)."""
    epochs, batch_size, n_samples, check_every, seed = (
        _as_python_number(v) for v in (epochs, batch_size, n_samples, check_every, seed))
    if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
        lr = float(lr)
    check_count("epochs", epochs)
    check_count("batch_size", batch_size)
    _check_positive_float("lr", lr)
    check_count("n_samples", n_samples)
    check_count("check_every", check_every)
    _check_seed("seed", seed)
    if not (isinstance(fused_adam, bool) or fused_adam == "auto"):
        raise ValueError(f"fused_adam must be True, False or 'auto', got {fused_adam!r}")
    if not (isinstance(compile, bool) or compile in COMPILE_MODES):
        raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, "
                         f"got {compile!r}")
    if not (isinstance(cuda_graph, bool) or cuda_graph == "auto"):
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    return epochs, batch_size, lr, n_samples, check_every, seed


def _check_fit_data(model: VAE, train: Any, test: Any, stochastic_binarization: Any
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ValueError naming the data or the flag that fit cannot train with; return the data
    detached (fit trains on their values: data with requires_grad get no .grad)."""
    if not isinstance(stochastic_binarization, bool):
        raise ValueError("stochastic_binarization must be True or False, got "
                         f"{stochastic_binarization!r}")
    for name, x in (("train", train), ("test", test)):
        if isinstance(x, torch.Tensor) and x.is_meta:
            raise ValueError(f"{name} is a tensor on the meta device, which holds no values: "
                             "fit needs the data themselves")
    check_input(model, train, "train")
    if test is not None:
        check_input(model, test, "test")
    if stochastic_binarization and (train.min() < 0 or train.max() > 1):
        raise ValueError("stochastic_binarization=True draws each pixel from Bernoulli(x), so "
                         "train must lie in [0, 1], got values in "
                         f"[{train.min().item():.3g}, {train.max().item():.3g}]")
    return train.detach(), None if test is None else test.detach()


def _stateful_objects(objective: Callable, on_epoch_end: Callable | None) -> dict[str, Any]:
    """The objects whose attributes a checkpoint saves and a resume restores: the
    objective, and the object whose method on_epoch_end is (a KLAnnealing's schedule)."""
    owner = getattr(on_epoch_end, "__self__", None)
    return {"objective": objective,
            "on_epoch_end": None if owner is None or owner is objective else owner}


def _object_states(stateful: dict[str, Any]) -> dict[str, Any]:
    states = {name: object_state(obj) for name, obj in stateful.items()}
    return {name: state for name, state in states.items() if state is not None}


def _check_callback_record(record: dict, on_epoch_end: Callable) -> None:
    """Convert the NumPy scalars on_epoch_end put in the epoch's record to Python numbers;
    ValueError naming the key for anything else a checkpoint could not hold."""
    for key, value in list(record.items()):
        record[key] = value = _as_python_number(value)
        if not isinstance(key, str) or not (value is None or isinstance(value, (
                bool, int, float, str))):
            raise ValueError(
                f"on_epoch_end ({getattr(on_epoch_end, '__qualname__', on_epoch_end)!r}) put "
                f"{key!r}: {value!r} ({type(value).__name__}) in the epoch's record; a record "
                "holds str keys and numbers or strings (use float(x) or x.item())")


def _use_fused_adam(fused_adam: bool | str, dev: torch.device) -> bool | None:
    """The `fused` argument of torch.optim.Adam. On the CPU the fused kernel is the fastest
    step (benchmarks/README.md: the plain per-parameter loop cost a third of an epoch);
    on CUDA "auto" keeps torch's default (foreach), which the CUDA graph path captures."""
    if fused_adam == "auto":
        return True if dev.type == "cpu" else None
    return fused_adam or None


def _use_cuda_graph(cuda_graph: bool | str, dev: torch.device, distributed: bool,
                    compile: bool | str, on_epoch_end) -> bool:
    """Whether fit captures its step in a CUDA graph (see fit's docstring)."""
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

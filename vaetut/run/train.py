"""Training: `fit` maximizes the ELBO with Adam on data held on the device.

fit checks its options and data (options.py), then, holding the checkpoint's writer
lock, builds the step (steps.py: eager, CUDA graph or data-parallel) and runs the epoch
loop: one pass of steps, the epoch's record (train means, test evaluation), the
finiteness check, the callback, the checkpoint (checkpoint.py, resume.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Callable

import torch
from tqdm.std import tqdm  # plain text: no widget needed in notebooks

from ..checks import check_count, check_input
from ..data import binarize_stochastic
from ..files import atomic_write
from ..model import VAE
from ..objective import ELBO, elbo
from . import distributed as dist_utils
from .checkpoint import save_checkpoint, writer_lock
from .options import FitOptions, as_python_number, check_fit_data, check_seed
from .resume import record_problem, run_definition
from .resume import resume as resume_run
from .state import RunObjects
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
        """Write the records as a JSON list, atomically (vaetut.files.atomic_write); NaN and
        infinite values are written as null (JSON has no NaN; `fit` never records one, but a
        History built by hand may)."""
        records = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                    for k, v in r.items()} for r in self.records]
        text = json.dumps(records, indent=1, allow_nan=False)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, batch_size: int = 1024, n_samples: int = 1,
             seed: int = 0) -> dict[str, float]:
    """Mean ELBO, log_px_given_z and kl_to_prior over x, with a seeded generator so the
    same model always gets the same numbers. The arguments are checked as `fit`'s are."""
    check_input(model, x, "x")
    check_count("batch_size", batch_size)
    check_count("n_samples", n_samples)
    check_seed("seed", seed)
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

    Each step draws a mini-batch x_1..x_B from `train` and makes one Adam step (learning
    rate `lr`) on the loss -(1/B) sum_b objective(model, x_b, n_samples, generator).elbo[b],
    an unbiased estimate of -ELBO(theta, phi) through z = mu + sigma * eps. One
    torch.Generator seeded by `seed` draws each epoch's permutation, the noise eps and any
    stochastic binarization, so the same seed gives the same run. After each of the
    `epochs` epochs the History records the train_* means of elbo, log_px_given_z and
    kl_to_prior (with `test`, their test_* means too), in nats per example. `model` is
    trained in place, in batches of `batch_size`.

    The other options (device, checkpoint and resume, objective, on_epoch_end, the fast
    paths, distributed) are described on the book's API page (book/api.md, "fit's
    options"); all of them are checked before training starts. A bad argument, or a
    checkpoint of another run, is a ValueError naming it; a NaN or infinite loss, metric or
    weight is a NonFiniteLossError saying where (nothing of that epoch is recorded or saved).
    """
    opts = FitOptions(epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed,
                      n_samples=n_samples, progress=progress, checkpoint=checkpoint,
                      resume=resume, stochastic_binarization=stochastic_binarization,
                      objective=objective, on_epoch_end=on_epoch_end, cuda_graph=cuda_graph,
                      fused_adam=fused_adam, check_every=check_every, compile=compile,
                      distributed=distributed, dist_timeout_s=dist_timeout_s)
    train, test = check_fit_data(model, train, test, opts.stochastic_binarization)
    # one writer per checkpoint: a second run writing it is refused at once
    with writer_lock(checkpoint) if opts.writes_checkpoint else contextlib.nullcontext():
        context, dev = dist_utils.Context(), opts.device
        if opts.distributed:
            context, dev = dist_utils.join(dev, opts.dist_timeout_s)
        model.to(dev)
        train = train.to(dev)
        gen = torch.Generator(device=dev).manual_seed(opts.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, fused=opts.fused,
                                     capturable=opts.graphed)
        run, objects, history, start_epoch = _start_or_resume(model, optimizer, gen, train,
                                                              test, opts, context)
        steps = _make_steps(model, optimizer, gen, train, opts, context)
        saved_epoch = start_epoch or None
        bar = tqdm(total=opts.epochs, initial=start_epoch, desc="fit", unit="epoch",
                   disable=not (opts.progress and context.is_main))
        try:
            for epoch in range(start_epoch + 1, opts.epochs + 1):
                model.train()
                x_epoch = binarize_stochastic(train, gen) if stochastic_binarization else train
                note = _checkpoint_note(checkpoint, saved_epoch)
                sums = dist_utils.all_reduce_sum(steps.run_epoch(x_epoch, epoch, note), context)
                record = _epoch_record(epoch, sums / len(train), model, test, opts.seed)
                _check_finite_epoch(record, model, epoch, opts.lr, note)
                history.records.append(record)
                if on_epoch_end is not None:  # before the save: what it records is saved too
                    on_epoch_end(epoch, model, record)
                    _check_callback_record(record, on_epoch_end)
                if checkpoint is not None:
                    if context.is_main:
                        _save(checkpoint, model, optimizer, gen, history, epoch, run, objects)
                    saved_epoch = epoch
                bar.set_postfix({k: f"{v:.2f}" for k, v in record.items()
                                 if k.endswith("elbo")}, refresh=False)
                bar.update(1)  # drawn with the numbers of the epoch it counts
        finally:
            bar.close()
    return history


def _start_or_resume(model: VAE, optimizer: torch.optim.Optimizer, gen: torch.Generator,
                     train: torch.Tensor, test: torch.Tensor | None, opts: FitOptions,
                     context: dist_utils.Context
                     ) -> tuple[dict | None, RunObjects | None, History, int]:
    """The run's definition (what a checkpoint must match), its stateful objects (whose
    progress a checkpoint saves), its history so far and the epoch it starts after: 0, or
    the checkpoint's epoch when resuming it. Under torchrun, every rank checks that all
    were launched with the same run."""
    history, start_epoch, run, objects = History(), 0, None, None
    if opts.checkpoint is not None:
        objects = RunObjects({"objective": opts.objective, "on_epoch_end": opts.on_epoch_end})
    if opts.checkpoint is not None or opts.distributed:
        run = run_definition(lr=opts.lr, seed=opts.seed, batch_size=opts.batch_size,
                             n_samples=opts.n_samples, objective=opts.objective, train=train,
                             test=test, stochastic_binarization=opts.stochastic_binarization)
    if opts.checkpoint is not None and opts.resume and os.path.lexists(opts.checkpoint):
        records, start_epoch = resume_run(opts.checkpoint, model, optimizer, gen, gen.device,
                                          run, opts.epochs, objects)
        history = History(records)
    if opts.distributed:  # ranks launched with different settings or data stop here, all of them
        dist_utils.check_same_run(context, {
            **run, "epochs": opts.epochs, "start_epoch": start_epoch, "model": model.config,
            "dtype": str(next(model.parameters()).dtype), "checkpoint": opts.checkpoint and
            os.path.abspath(opts.checkpoint), "resume": opts.resume})
    return run, objects, history, start_epoch


def _make_steps(model: VAE, optimizer: torch.optim.Optimizer, gen: torch.Generator,
                train: torch.Tensor, opts: FitOptions, context: dist_utils.Context):
    """The step runner (steps.py): a CUDA graph, data-parallel, or the eager loop."""
    if opts.graphed:  # the graphs read the data at one address: the binarization goes there
        x_static = train.clone() if opts.stochastic_binarization else train
        return GraphedSteps(model, opts.objective, optimizer, x_static, opts.batch_size,
                            opts.n_samples, gen)
    if opts.distributed:
        return DataParallelSteps(model, opts.objective, optimizer, len(train), opts.batch_size,
                                 opts.n_samples, gen, context)
    step_objective = opts.objective if not opts.compile else torch.compile(
        opts.objective, dynamic=False, mode=None if opts.compile is True else opts.compile)
    return EagerSteps(model, step_objective, optimizer, len(train), opts.batch_size,
                      opts.n_samples, gen, opts.check_every)


def _epoch_record(epoch: int, train_means: torch.Tensor, model: VAE,
                  test: torch.Tensor | None, seed: int) -> dict[str, Any]:
    """The epoch's record: the train_* means, and the test_* evaluation (by a generator of
    its own, seeded seed + 1, so the training stream is untouched)."""
    record = {"epoch": epoch,
              **{f"train_{k}": v for k, v in zip(METRICS, train_means.tolist())}}
    if test is not None:
        record.update({f"test_{k}": v
                       for k, v in _evaluate(model, test, 1024, 1, seed + 1).items()})
    return record


def _save(checkpoint: str | os.PathLike, model: VAE, optimizer: torch.optim.Optimizer,
          gen: torch.Generator, history: History, epoch: int, run: dict,
          objects: RunObjects) -> None:
    save_checkpoint(checkpoint, model, optimizer=optimizer.state_dict(),
                    generator=gen.get_state(), history=history.records, epoch=epoch,
                    seed=run["seed"], run=run, generator_device=gen.device.type,
                    object_state=objects.state())


def _check_callback_record(record: dict, on_epoch_end: Callable) -> None:
    """Convert the NumPy scalars and one-element arrays or tensors on_epoch_end put in the
    epoch's record to Python numbers; ValueError naming the key for anything else that a
    checkpoint's record cannot hold (resume.record_problem: the test a resume applies)."""
    for key, value in list(record.items()):
        record[key] = as_python_number(value)
    if (problem := record_problem(record)) is not None:
        raise ValueError(
            f"on_epoch_end ({getattr(on_epoch_end, '__qualname__', on_epoch_end)!r}) put "
            f"{problem} in the epoch's record; a record holds str keys and finite numbers, "
            "strings or None (use float(x) or x.item(), and None for a missing value)")

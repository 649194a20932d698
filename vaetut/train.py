"""Training: `fit` maximizes the ELBO with Adam on data held on the device."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from typing import Any, Callable

import torch
from tqdm.std import tqdm  # plain text: no widget needed in notebooks

from .checkpoint import load_checkpoint, save_checkpoint
from .data import binarize_stochastic
from .device import pick_device
from . import distributed as dist_utils
from .model import VAE
from .objective import ELBO, check_count, check_input, elbo

METRICS = ("elbo", "log_px_given_z", "kl_to_prior")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the step."""


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


def _check_losses(losses: torch.Tensor, start: int, stop: int, epoch: int,
                  steps_per_epoch: int, lr: float, check_every: int, note: str) -> None:
    """fit(check_every=N): raise NonFiniteLossError naming the first non-finite loss among
    steps start+1..stop of this epoch (one host synchronisation for N steps); `note`
    (from _checkpoint_note) ends the message."""
    window = losses[start:stop]
    bad = ~torch.isfinite(window)
    if not bad.any():
        return
    first = int(bad.nonzero()[0, 0])
    raise NonFiniteLossError(
        f"loss is {window[first].item()} at epoch {epoch}, step {start + first + 1} of "
        f"{steps_per_epoch} (lr={lr}); found by the check after step {stop} "
        f"(check_every={check_every}), so steps {start + first + 1} to {stop} have changed "
        "the weights and the model is not usable" + note)


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


def _fingerprint(x: torch.Tensor | None) -> str | None:
    """Shape, dtype and a hash of the bytes of x (on the CPU, so the same on any device)."""
    if x is None:
        return None
    flat = x.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy(), digest_size=16).hexdigest()
    return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} blake2b:{digest}"


def _objective_name(objective: Callable) -> str:
    """The objective's module and qualified name (its parameters, such as a BetaELBO's
    beta, are not part of it)."""
    if isinstance(objective, functools.partial):
        return f"functools.partial({_objective_name(objective.func)})"
    target = objective if hasattr(objective, "__qualname__") else type(objective)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


RUN_LABELS = {"train": "train data", "test": "test data"}


def _run_definition(*, lr, seed, batch_size, n_samples, objective, stochastic_binarization,
                    train, test) -> dict[str, Any]:
    """What defines a run and must be the same for a resume to continue it."""
    return {"lr": lr, "seed": seed, "batch_size": batch_size, "n_samples": n_samples,
            "objective": _objective_name(objective),
            "stochastic_binarization": bool(stochastic_binarization),
            "train": _fingerprint(train), "test": _fingerprint(test)}


def _resume(checkpoint: str | os.PathLike, model: VAE, optimizer: torch.optim.Optimizer,
            gen: torch.Generator, dev: torch.device, run: dict[str, Any], epochs: int,
            fused_adam: bool) -> tuple[History, int]:
    """Load the model, optimizer and generator states from `checkpoint` after checking
    that it continues the run this call defines; return its history and epoch."""
    stored, payload = load_checkpoint(checkpoint, map_location=dev)
    afresh = ("pass resume=False (command line: --no-resume) to start afresh and overwrite "
              "it, or another checkpoint path (--out)")
    if stored.config != model.config:
        raise ValueError(f"checkpoint {checkpoint!r} holds a model {stored.config}, "
                         f"not {model.config}; {afresh}")
    stored_dtype, dtype = next(stored.parameters()).dtype, next(model.parameters()).dtype
    if stored_dtype != dtype:
        raise ValueError(f"checkpoint {checkpoint!r} holds a {stored_dtype} model, this one is "
                         f"{dtype}; convert the model with model.to({stored_dtype}), or {afresh}")
    missing = [k for k in ("optimizer", "generator", "history", "epoch") if k not in payload]
    if missing:
        raise ValueError(f"{checkpoint!r} holds a model but no training state "
                         f"({', '.join(missing)} missing): it was not written by fit, so "
                         f"training cannot resume from it; {afresh}")
    if not isinstance(payload.get("run"), dict):
        raise ValueError(f"{checkpoint!r} does not record the run that wrote it (lr, seed, "
                         "batch size, objective, data): it was written by an older vaetut, "
                         f"so a resume cannot be checked; {afresh}")
    differences = [f"{RUN_LABELS.get(k, k)}: {payload['run'].get(k)!r} in the checkpoint, "
                   f"{v!r} in this call" for k, v in run.items() if payload["run"].get(k) != v]
    if differences:
        raise ValueError(f"cannot resume from {checkpoint!r}: it was written by another run ("
                         + "; ".join(differences) + "). To continue it, call fit with the "
                         f"checkpoint's settings and data; otherwise {afresh}")
    if payload["epoch"] > epochs:
        raise ValueError(f"{checkpoint!r} holds epoch {payload['epoch']}, more than "
                         f"epochs={epochs} asks for; pass epochs={payload['epoch']} to get it "
                         f"as it is or more to train on, or {afresh}")
    model.load_state_dict(payload["model"])
    opt_state = payload["optimizer"]
    if fused_adam or any(g.get("fused") for g in opt_state["param_groups"]):
        # run the kernel this call asks for, whatever the checkpoint was saved with
        opt_state = {**opt_state, "param_groups": [
            {**g, "fused": True if fused_adam else None} for g in opt_state["param_groups"]]}
    optimizer.load_state_dict(opt_state)
    gen.set_state(payload["generator"].cpu())
    return History(payload["history"]), payload["epoch"]


def fit(model: VAE, train: torch.Tensor, test: torch.Tensor | None = None, *, epochs: int = 10,
        batch_size: int = 128, lr: float = 1e-3, device: str | torch.device = "auto",
        seed: int = 0, n_samples: int = 1, progress: bool = True,
        checkpoint: str | os.PathLike | None = None, resume: bool = True,
        stochastic_binarization: bool = False,
        objective: Callable[..., ELBO] = elbo,
        on_epoch_end: Callable[[int, VAE, dict], None] | None = None,
        fused_adam: bool = False, check_every: int = 1,
        compile: bool | str = False, distributed: bool | None = None,
        dist_timeout_s: float = 120.0) -> History:
    """Train `model` by gradient ascent on the mean ELBO of mini-batches; return a History.

    The data are moved to the device once and batched by indexing a seeded permutation;
    one torch.Generator (seeded by `seed`) drives the permutation, the reparameterization
    noise and any stochastic binarization, so the same seed gives the same run. The loss
    differentiated is -mean over the batch of `objective(model, x, n_samples, generator)`.

    With `checkpoint`, the model, optimizer, generator and history are saved atomically
    after every epoch, with what defines the run (lr, seed, batch_size, n_samples, the
    objective's name, stochastic_binarization and a hash of the train and test data);
    with `resume`, an existing checkpoint there is continued from, and the result equals
    that of an uninterrupted run. A checkpoint of another run (any of those differ, or
    another model or dtype), one without training state, or one holding more epochs than
    `epochs` is refused with a ValueError; `epochs` equal to the checkpoint's returns it
    as it is. A NaN or infinite loss raises NonFiniteLossError naming the epoch and step,
    before that step changes the weights; a non-finite epoch metric (train or test) or
    weight raises it too, before anything of that epoch is recorded, saved or passed to
    `on_epoch_end`.

    Fast paths (off by default; each keeps the results of the plain loop, see
    tests/test_fast_paths.py and benchmarks/README.md):

    - `fused_adam=True`: Adam's fused kernel (one pass over each parameter instead of
      about ten); equal to the plain loop within float rounding.
    - `check_every=N` (N > 1): the loss is tested for NaN/inf every N steps and at the
      end of each epoch instead of at every step, so a GPU run does not wait for the
      device at each step. Results are bit-identical to N = 1. A NaN or infinite loss
      still raises NonFiniteLossError naming the epoch and the first bad step, before
      anything of that epoch is evaluated, recorded, checkpointed or passed to
      `on_epoch_end`; but the steps up to the check have changed the weights, so the
      model is not usable afterwards (the checkpoint, if any, holds the last good epoch).
    - `compile=True` (or a torch.compile mode such as "reduce-overhead"): the objective
      is compiled with torch.compile (static shapes); equal within float rounding. The
      first steps pay the compilation (seconds to minutes).

    Data parallelism (`vaetut.distributed`): launched by `torchrun --nproc-per-node N`,
    or with `distributed=True`, each process joins the group (nccl on CUDA, gloo on CPU),
    the model is wrapped in DistributedDataParallel, and each process computes its slice
    of every global batch of `batch_size` (the noise of the whole batch is drawn on every
    process and sliced, so the run follows the single-process one). Metrics are summed
    over processes; only rank 0 writes the checkpoint and shows the progress bar. A
    process that fails makes the others' next collective fail after `dist_timeout_s`
    seconds at most, instead of hanging. `distributed=False` ignores a torchrun launch.
    The process group stays up after `fit` returns, so later calls in the same process
    reuse it (a group torn down and made again on torchrun's store can hang); end it with
    `vaetut.distributed.leave` or `torch.distributed.destroy_process_group()`.
    """
    check_count("epochs", epochs)
    check_count("batch_size", batch_size)
    _check_positive_float("lr", lr)
    check_count("n_samples", n_samples)
    check_count("check_every", check_every)
    _check_seed("seed", seed)
    if not isinstance(fused_adam, bool):
        raise ValueError(f"fused_adam must be True or False, got {fused_adam!r}")
    if not (isinstance(compile, bool) or compile in COMPILE_MODES):
        raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, "
                         f"got {compile!r}")
    check_input(model, train, "train")
    if test is not None:
        check_input(model, test, "test")
    dev = pick_device(device)
    if distributed is None:
        distributed = dist_utils.launched_by_torchrun()
    context = dist_utils.Context()
    if distributed:
        if compile or check_every > 1:
            raise ValueError("compile and check_every > 1 are single-process fast paths; "
                             "use them with distributed=False")
        context, dev = dist_utils.join(dev, dist_timeout_s)
    model.to(dev)
    train = train.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    optimizer = (torch.optim.Adam(model.parameters(), lr=lr, fused=True) if fused_adam
                 else torch.optim.Adam(model.parameters(), lr=lr))
    history, start_epoch, saved_epoch, run = History(), 0, None, None
    if checkpoint is not None:
        run = _run_definition(lr=lr, seed=seed, batch_size=batch_size, n_samples=n_samples,
                              objective=objective, train=train, test=test,
                              stochastic_binarization=stochastic_binarization)
        if resume and os.path.exists(checkpoint):
            history, start_epoch = _resume(checkpoint, model, optimizer, gen, dev, run, epochs,
                                           fused_adam)
            saved_epoch = start_epoch

    n = len(train)
    steps_per_epoch = math.ceil(n / batch_size)
    step_objective = objective
    if compile:
        step_objective = torch.compile(objective, dynamic=False,
                                       mode=None if compile is True else compile)
    lazy_check = check_every > 1
    ddp_objective = None
    if distributed:
        # DDP broadcasts rank 0's weights now and averages gradients over ranks in backward
        ddp_objective = torch.nn.parallel.DistributedDataParallel(
            dist_utils.ObjectiveModule(model, objective))
    bar = tqdm(total=epochs, initial=start_epoch, disable=not (progress and context.is_main),
               desc="fit", unit="epoch")
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            model.train()
            x_epoch = binarize_stochastic(train, gen) if stochastic_binarization else train
            sums = torch.zeros(3, dtype=torch.float64, device=dev)
            if lazy_check:  # each step's loss, kept on the device, tested every check_every steps
                losses, checked = torch.zeros(steps_per_epoch, device=dev), 0
            for step, idx in enumerate(torch.randperm(n, generator=gen, device=dev).split(batch_size)):
                if ddp_objective is None:
                    terms = step_objective(model, x_epoch[idx], n_samples, gen, validate=False)
                    loss = global_loss = -terms.elbo.mean()
                else:
                    terms, loss, global_loss = _data_parallel_step(
                        ddp_objective, model, x_epoch, idx, n_samples, gen, context)
                if lazy_check:
                    losses[step] = loss.detach()
                    if (step + 1) % check_every == 0:
                        _check_losses(losses, checked, step + 1, epoch, steps_per_epoch, lr,
                                      check_every, _checkpoint_note(checkpoint, saved_epoch))
                        checked = step + 1
                elif not torch.isfinite(global_loss):
                    raise NonFiniteLossError(
                        f"loss is {global_loss.item()} at epoch {epoch}, step {step + 1} of "
                        f"{steps_per_epoch} (lr={lr}); the weights are those before this step"
                        + _checkpoint_note(checkpoint, saved_epoch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums += torch.stack([t.detach().sum() for t in terms]).double()
            if lazy_check and checked < steps_per_epoch:
                _check_losses(losses, checked, steps_per_epoch, epoch, steps_per_epoch, lr,
                              check_every, _checkpoint_note(checkpoint, saved_epoch))
            sums = dist_utils.all_reduce_sum(sums, context)
            record = {"epoch": epoch,
                      **{f"train_{k}": v for k, v in zip(METRICS, (sums / n).tolist())}}
            if test is not None:
                record.update({f"test_{k}": v
                               for k, v in _evaluate(model, test, 1024, 1, seed + 1).items()})
            _check_finite_epoch(record, model, epoch, lr, _checkpoint_note(checkpoint, saved_epoch))
            history.records.append(record)
            if checkpoint is not None:
                if context.is_main:
                    save_checkpoint(checkpoint, model, optimizer=optimizer.state_dict(),
                                    generator=gen.get_state(), history=history.records,
                                    epoch=epoch, seed=seed, run=run)
                saved_epoch = epoch
            if on_epoch_end is not None:
                on_epoch_end(epoch, model, record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
    finally:
        bar.close()
    return history


def _data_parallel_step(ddp_objective, model: VAE, x_epoch: torch.Tensor, idx: torch.Tensor,
                        n_samples: int, gen: torch.Generator, context: dist_utils.Context):
    """This rank's terms and loss for one global batch `idx`, and the global loss.

    Every rank draws the noise of the whole batch (same generator, same order as the
    single-process objective would) and keeps its slice. DDP averages gradients over the
    world_size ranks, so this rank's loss is its sum of -ELBO times world_size / batch:
    the average is then the gradient of the global batch mean, whatever the slice sizes.
    """
    dtype = next(model.parameters()).dtype
    eps = torch.randn((n_samples, len(idx), model.z_dim), dtype=dtype, device=idx.device,
                      generator=gen)
    part = context.batch_slice(len(idx))
    terms = ddp_objective(x_epoch[idx[part]], n_samples, gen, eps[:, part])
    loss = -terms.elbo.sum() * (context.world_size / len(idx))
    global_loss = dist_utils.all_reduce_sum(-terms.elbo.detach().sum(), context) / len(idx)
    return terms, loss, global_loss

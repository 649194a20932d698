"""Training: `fit` maximizes the ELBO with Adam on data held on the device.

fit checks its arguments, builds the step (vaetut/steps.py: eager, CUDA graph or
data-parallel), then runs the epoch loop: one pass of steps, the epoch's record (train
means, test evaluation), the finiteness check, the checkpoint (vaetut/checkpoint.py,
vaetut/resume.py), the callback.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import torch
from tqdm.std import tqdm  # plain text: no widget needed in notebooks

from .checkpoint import save_checkpoint
from .data import binarize_stochastic
from .device import pick_device
from . import distributed as dist_utils
from .model import VAE
from .objective import ELBO, check_count, check_input, elbo
from .resume import resume as resume_run, run_definition
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
        cuda_graph: bool | str = "auto", fused_adam: bool = False, check_every: int = 1,
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

    How a step is launched (vaetut/steps.py):

    - `cuda_graph="auto"` (the default): on CUDA, the whole step (batch gathering,
      forward, backward, Adam) is captured in a CUDA graph and replayed, one launch per
      step instead of about ninety, when nothing can change what a step computes between
      steps: a single process, no `compile` and no `on_epoch_end` (a callback such as KL
      annealing's may change the objective, and a graph would freeze it). Elsewhere the
      plain loop runs. `cuda_graph=True` asks for the graph (CUDA only; then the
      objective's Python-side state is read once, at capture), `False` for the plain
      loop. On the graph path the same seed gives the same run and a checkpoint resumes
      it exactly; NaN or infinite losses are tested once per epoch, as with check_every
      (below), and raise NonFiniteLossError naming the first bad step.

    Fast paths of the plain loop (off by default; each keeps the results of the plain
    loop, see tests/test_fast_paths.py and benchmarks/README.md):

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
    _check_fit_arguments(epochs=epochs, batch_size=batch_size, lr=lr, n_samples=n_samples,
                         check_every=check_every, seed=seed, fused_adam=fused_adam,
                         compile=compile, cuda_graph=cuda_graph)
    check_input(model, train, "train")
    if test is not None:
        check_input(model, test, "test")
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
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fused_adam or None,
                                 capturable=graphed)
    history, start_epoch, saved_epoch, run = History(), 0, None, None
    if checkpoint is not None:
        run = run_definition(lr=lr, seed=seed, batch_size=batch_size, n_samples=n_samples,
                             objective=objective, train=train, test=test,
                             stochastic_binarization=stochastic_binarization)
        if resume and os.path.exists(checkpoint):
            records, start_epoch = resume_run(checkpoint, model, optimizer, gen, dev, run, epochs)
            history, saved_epoch = History(records), start_epoch

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


def _check_fit_arguments(*, epochs, batch_size, lr, n_samples, check_every, seed, fused_adam,
                         compile, cuda_graph) -> None:
    """ValueError naming the first argument of fit that is not what it must be."""
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
    if not (isinstance(cuda_graph, bool) or cuda_graph == "auto"):
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")


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

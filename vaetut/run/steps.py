"""The training step, built in one place: eager, captured in a CUDA graph, or data-parallel.

`fit` (train.py) runs the epochs; for each one it hands the epoch's data to a step runner,
which makes one pass over it in a seeded order and returns the summed terms. The runners
differ only in how a step is launched; each differentiates the same loss,

    loss = -(1/B) sum_b objective(model, x_b, n_samples, generator).elbo[b],

and each draws the permutation and the noise from the one generator, so a seed fixes a run.

    EagerSteps         one step at a time from Python (CPU, MPS or CUDA). Each loss is
                       tested before it changes the weights, or every `check_every` steps.
    GraphedSteps       CUDA: the whole step (gathering the batch, forward, backward, Adam,
                       summing the terms) captured once in a CUDA graph and replayed, so a
                       step costs one launch instead of about ninety. The losses are
                       tested once, at the end of the epoch.
    DataParallelSteps  under torchrun: each process computes its slice of every global
                       batch, and DistributedDataParallel averages the gradients.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import distributed as dist_utils
from ..model import VAE


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the step."""


def _term_sums(terms) -> torch.Tensor:
    """The batch's sums of elbo, log_px_given_z and kl_to_prior, in float64, shape (3,)."""
    return torch.stack([t.detach().sum() for t in terms]).double()


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def raise_first_bad_loss(losses: torch.Tensor, start: int, stop: int, epoch: int,
                         steps_per_epoch: int, lr: float, found_by: str, note: str) -> None:
    """Raise NonFiniteLossError naming the first non-finite loss among steps start+1..stop
    of this epoch (one host synchronisation), or return if there is none. `note` (what
    the checkpoint holds) ends the message."""
    window = losses[start:stop]
    bad = ~torch.isfinite(window)
    if not bad.any():
        return
    first = int(bad.nonzero()[0, 0])
    raise NonFiniteLossError(
        f"loss is {window[first].item()} at epoch {epoch}, step {start + first + 1} of "
        f"{steps_per_epoch} (lr={lr}); found by {found_by}, so steps {start + first + 1} to "
        f"{stop} have changed the weights and the model is not usable" + note)


def _raise_bad_loss_before_step(loss: torch.Tensor, epoch: int, step: int,
                                steps_per_epoch: int, lr: float, note: str) -> None:
    raise NonFiniteLossError(
        f"loss is {loss.item()} at epoch {epoch}, step {step} of {steps_per_epoch} "
        f"(lr={lr}); the weights are those before this step" + note)


class EagerSteps:
    """One step at a time, launched from Python: the plain loop, on any device."""

    def __init__(self, model: VAE, objective: Callable, optimizer: torch.optim.Optimizer,
                 n: int, batch_size: int, n_samples: int, generator: torch.Generator,
                 check_every: int = 1):
        self.model, self.objective, self.optimizer = model, objective, optimizer
        self.n, self.batch_size, self.n_samples = n, batch_size, n_samples
        self.gen, self.check_every = generator, check_every
        self.steps_per_epoch = math.ceil(n / batch_size)

    def run_epoch(self, x_epoch: torch.Tensor, epoch: int, note: str = "") -> torch.Tensor:
        """One pass over x_epoch in a seeded order; the summed terms, shape (3,)."""
        device, lazy = x_epoch.device, self.check_every > 1
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        if lazy:  # each step's loss stays on the device, tested every check_every steps
            losses, checked = torch.zeros(self.steps_per_epoch, device=device), 0
        perm = torch.randperm(self.n, generator=self.gen, device=device)
        for step, idx in enumerate(perm.split(self.batch_size)):
            terms = self.objective(self.model, x_epoch.index_select(0, idx), self.n_samples,
                                   self.gen, validate=False)
            loss = -terms.elbo.mean()
            # one synchronisation per step, and no tensor ops: a Python float's test
            if not lazy and not math.isfinite(loss.item()):
                _raise_bad_loss_before_step(loss, epoch, step + 1, self.steps_per_epoch,
                                            _lr(self.optimizer), note)
            if lazy:
                losses[step] = loss.detach()
                if (step + 1) % self.check_every == 0 or step + 1 == self.steps_per_epoch:
                    raise_first_bad_loss(losses, checked, step + 1, epoch, self.steps_per_epoch,
                                         _lr(self.optimizer), f"the check after step {step + 1} "
                                         f"(check_every={self.check_every})", note)
                    checked = step + 1
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums += _term_sums(terms)
        return sums


class GraphedSteps:
    """The whole training step captured in a CUDA graph per batch size, then replayed.

    Everything a step reads or writes lives at fixed addresses, allocated before capture:
    the epoch's data (`x_static`, which stochastic binarization overwrites in place), the
    permutation, a step counter, the gradients, Adam's state, the per-step losses and the
    running sums. Inside the graph, step s gathers its batch as perm[s * B + arange(b)],
    so a replay needs no copy from the host; the counter then moves on by one. The
    generator is registered with each graph, so each replay draws fresh noise from it and
    advances it as the eager loop would: the same seed gives the same run, and a
    checkpoint's generator state resumes it.

    The last, smaller batch of an epoch gets a graph of its own. The optimizer must be
    Adam built with capturable=True (fused or not). Warm-up steps run on a side stream
    before capture, as CUDA graphs need; they use a scratch generator, and the weights and
    the optimizer's state are put back afterwards, so they leave no trace in the run.

    With `capture=False` the same step body runs eagerly, on any device: that is how the
    arithmetic of this path is tested without a GPU (tests/test_steps.py).
    """

    WARMUP_STEPS = 3

    def __init__(self, model: VAE, objective: Callable, optimizer: torch.optim.Optimizer,
                 x_static: torch.Tensor, batch_size: int, n_samples: int,
                 generator: torch.Generator, capture: bool = True):
        if capture and x_static.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the data on a CUDA device, not "
                             f"{x_static.device}")
        self.model, self.objective, self.optimizer = model, objective, optimizer
        self.x, self.batch_size, self.n_samples, self.gen = x_static, batch_size, n_samples, generator
        n, device = len(x_static), x_static.device
        full, last = divmod(n, batch_size)
        self.sizes = [batch_size] * full + ([last] if last else [])  # one entry per step
        self.steps_per_epoch = len(self.sizes)
        self.perm = torch.arange(n, device=device)
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        dtype = next(model.parameters()).dtype
        self.losses = torch.zeros(self.steps_per_epoch, dtype=dtype, device=device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.offsets = {b: torch.arange(b, device=device) for b in set(self.sizes)}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._grads_at_fixed_addresses()
        if capture:
            self._capture()

    def _grads_at_fixed_addresses(self) -> None:
        """Gradients allocated once, outside any graph, so every graph writes the same ones."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)

    def _step(self, offsets: torch.Tensor, generator: torch.Generator) -> None:
        """One step, written so that it can be captured: no host synchronisation, no
        allocation that outlives it, the batch found from device-side state."""
        idx = self.perm[self.counter * self.batch_size + offsets]  # (b,)
        terms = self.objective(self.model, self.x[idx], self.n_samples, generator,
                               validate=False)
        loss = -terms.elbo.mean()
        self.optimizer.zero_grad(set_to_none=False)  # in place: the addresses stay
        loss.backward()
        self.optimizer.step()
        self.losses.index_copy_(0, self.counter.view(1), loss.detach().view(1))
        self.sums.add_(_term_sums(terms))
        self.counter.add_(1)

    def _capture(self) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                       for p, s in self.optimizer.state.items()}
        scratch = torch.Generator(device=self.x.device).manual_seed(0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for size in self.offsets:
                for _ in range(self.WARMUP_STEPS):
                    self.counter.zero_()
                    self._step(self.offsets[size], scratch)
        torch.cuda.current_stream().wait_stream(side)
        for size, offsets in self.offsets.items():
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.gen)
            with torch.cuda.graph(graph):
                self._step(offsets, self.gen)
            self.graphs[size] = graph
        with torch.no_grad():  # the warm-up leaves no trace: weights and Adam's state back
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
            for p, state in self.optimizer.state.items():
                for k, v in state.items():
                    if not torch.is_tensor(v):
                        continue
                    if p in saved_state:  # a resumed run: its state as loaded
                        v.copy_(saved_state[p][k])
                    else:  # a fresh Adam's state is all zeros (step 0 included)
                        v.zero_()

    def run_epoch(self, x_epoch: torch.Tensor, epoch: int, note: str = "") -> torch.Tensor:
        """One pass over the data in a seeded order; the summed terms, shape (3,)."""
        if x_epoch.data_ptr() != self.x.data_ptr():
            self.x.copy_(x_epoch)  # the graphs read the data at its captured address
        self.perm.copy_(torch.randperm(len(self.perm), generator=self.gen,
                                       device=self.perm.device))
        self.counter.zero_()
        self.sums.zero_()
        for size in self.sizes:
            if self.graphs:
                self.graphs[size].replay()
            else:
                self._step(self.offsets[size], self.gen)
        raise_first_bad_loss(self.losses, 0, self.steps_per_epoch, epoch, self.steps_per_epoch,
                             _lr(self.optimizer), "the check at the end of the epoch "
                             "(cuda_graph)", note)
        return self.sums.clone()


class DataParallelSteps:
    """Under torchrun: DistributedDataParallel over the objective; this process computes
    its slice of every global batch of `batch_size`."""

    def __init__(self, model: VAE, objective: Callable, optimizer: torch.optim.Optimizer,
                 n: int, batch_size: int, n_samples: int, generator: torch.Generator,
                 context: dist_utils.Context):
        self.model, self.optimizer, self.context = model, optimizer, context
        self.n, self.batch_size, self.n_samples, self.gen = n, batch_size, n_samples, generator
        self.steps_per_epoch = math.ceil(n / batch_size)
        # DDP broadcasts rank 0's weights now and averages gradients over ranks in backward
        self.ddp_objective = torch.nn.parallel.DistributedDataParallel(
            dist_utils.ObjectiveModule(model, objective))

    def run_epoch(self, x_epoch: torch.Tensor, epoch: int, note: str = "") -> torch.Tensor:
        """One pass over the data; this process's summed terms (fit sums over processes)."""
        sums = torch.zeros(3, dtype=torch.float64, device=x_epoch.device)
        perm = torch.randperm(self.n, generator=self.gen, device=x_epoch.device)
        for step, idx in enumerate(perm.split(self.batch_size)):
            terms, loss, global_loss = data_parallel_step(
                self.ddp_objective, self.model, x_epoch, idx, self.n_samples, self.gen,
                self.context)
            if not torch.isfinite(global_loss):
                _raise_bad_loss_before_step(global_loss, epoch, step + 1, self.steps_per_epoch,
                                            _lr(self.optimizer), note)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums += _term_sums(terms)
        return sums


def data_parallel_step(ddp_objective, model: VAE, x_epoch: torch.Tensor, idx: torch.Tensor,
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

"""Training: `fit` maximizes the ELBO with Adam on data held on the device."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import torch
from tqdm.std import tqdm  # plain text: no widget needed in notebooks

from .checkpoint import load_checkpoint, save_checkpoint
from .data import binarize_stochastic
from .device import pick_device
from .model import VAE
from .objective import ELBO, check_input, elbo

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
        with open(path, "w") as f:
            json.dump(self.records, f, indent=1)


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, batch_size: int = 1024, n_samples: int = 1,
             seed: int = 0) -> dict[str, float]:
    """Mean ELBO, log_px_given_z and kl_to_prior over x, with a seeded generator so the
    same model always gets the same numbers."""
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


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or not value > 0 or (kind is float and not math.isfinite(value)):
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def fit(model: VAE, train: torch.Tensor, test: torch.Tensor | None = None, *, epochs: int = 10,
        batch_size: int = 128, lr: float = 1e-3, device: str | torch.device = "auto",
        seed: int = 0, n_samples: int = 1, progress: bool = True,
        checkpoint: str | os.PathLike | None = None, resume: bool = True,
        stochastic_binarization: bool = False,
        objective: Callable[..., ELBO] = elbo,
        on_epoch_end: Callable[[int, VAE, dict], None] | None = None) -> History:
    """Train `model` by gradient ascent on the mean ELBO of mini-batches; return a History.

    The data are moved to the device once and batched by indexing a seeded permutation;
    one torch.Generator (seeded by `seed`) drives the permutation, the reparameterization
    noise and any stochastic binarization, so the same seed gives the same run. The loss
    differentiated is -mean over the batch of `objective(model, x, n_samples, generator)`.

    With `checkpoint`, the model, optimizer, generator and history are saved atomically
    after every epoch; with `resume`, an existing checkpoint there is continued from, and
    the result equals that of an uninterrupted run. A NaN or infinite loss raises
    NonFiniteLossError naming the epoch and step, before that step changes the weights.
    """
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("lr", lr, float)
    _check_positive("n_samples", n_samples)
    check_input(model, train, "train")
    if test is not None:
        check_input(model, test, "test")
    dev = pick_device(device)
    model.to(dev)
    train = train.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, start_epoch = History(), 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        stored, payload = load_checkpoint(checkpoint, map_location=dev)
        if stored.config != model.config:
            raise ValueError(f"checkpoint {checkpoint!r} holds a model {stored.config}, "
                             f"not {model.config}")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        gen.set_state(payload["generator"].cpu())
        history, start_epoch = History(payload["history"]), payload["epoch"]

    n = len(train)
    steps_per_epoch = math.ceil(n / batch_size)
    bar = tqdm(total=epochs, initial=start_epoch, disable=not progress, desc="fit", unit="epoch")
    for epoch in range(start_epoch + 1, epochs + 1):
        model.train()
        x_epoch = binarize_stochastic(train, gen) if stochastic_binarization else train
        sums = torch.zeros(3, dtype=torch.float64, device=dev)
        for step, idx in enumerate(torch.randperm(n, generator=gen, device=dev).split(batch_size)):
            terms = objective(model, x_epoch[idx], n_samples, gen, validate=False)
            loss = -terms.elbo.mean()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, step {step + 1} of {steps_per_epoch}"
                    f" (lr={lr}); the weights are those before this step"
                    + (f" and {checkpoint!r} holds epoch {epoch - 1}" if checkpoint else ""))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([t.detach().sum() for t in terms]).double()
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in zip(METRICS, (sums / n).tolist())}}
        if test is not None:
            record.update({f"test_{k}": v for k, v in evaluate(model, test, seed=seed + 1).items()})
        history.records.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer=optimizer.state_dict(),
                            generator=gen.get_state(), history=history.records, epoch=epoch,
                            seed=seed)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, record)
        bar.update(1)
        bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
    bar.close()
    return history

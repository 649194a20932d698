"""Resuming a run from its checkpoint, and refusing to resume another run.

`fit` stores with every checkpoint what defines its run (`run_definition`); `resume`
loads a checkpoint only when it continues the run the caller defines, so a changed
learning rate, seed, batch size, objective or data set is an error, not a silent mix.
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Callable

import torch

from .checkpoint import load_checkpoint
from .model import VAE


def fingerprint(x: torch.Tensor | None) -> str | None:
    """Shape, dtype and a hash of the bytes of x (on the CPU, so the same on any device)."""
    if x is None:
        return None
    flat = x.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy(), digest_size=16).hexdigest()
    return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} blake2b:{digest}"


def objective_name(objective: Callable) -> str:
    """The objective's module and qualified name (its parameters, such as a BetaELBO's
    beta, are not part of it)."""
    if isinstance(objective, functools.partial):
        return f"functools.partial({objective_name(objective.func)})"
    target = objective if hasattr(objective, "__qualname__") else type(objective)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


RUN_LABELS = {"train": "train data", "test": "test data"}


def run_definition(*, lr, seed, batch_size, n_samples, objective, stochastic_binarization,
                    train, test) -> dict[str, Any]:
    """What defines a run and must be the same for a resume to continue it."""
    return {"lr": lr, "seed": seed, "batch_size": batch_size, "n_samples": n_samples,
            "objective": objective_name(objective),
            "stochastic_binarization": bool(stochastic_binarization),
            "train": fingerprint(train), "test": fingerprint(test)}


def resume(checkpoint: str | os.PathLike, model: VAE, optimizer: torch.optim.Optimizer,
           gen: torch.Generator, dev: torch.device, run: dict[str, Any], epochs: int
           ) -> tuple[list[dict[str, float]], int]:
    """Load the model, optimizer and generator states from `checkpoint` after checking
    that it continues the run `run` defines; return its history records and epoch.

    The optimizer's state is loaded into `optimizer` as it was built by this call: the
    kernel it runs (fused or not) and whether its step is capturable in a CUDA graph
    are this call's choice, whatever the checkpoint was saved with."""
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
    ours = optimizer.param_groups[0]
    opt_state = {**opt_state, "param_groups": [
        {**g, "fused": ours["fused"], "capturable": ours["capturable"]}
        for g in opt_state["param_groups"]]}
    optimizer.load_state_dict(opt_state)
    gen.set_state(payload["generator"].cpu())
    return payload["history"], payload["epoch"]

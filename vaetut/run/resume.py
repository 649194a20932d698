"""Resuming a run from its checkpoint, and refusing to resume another run.

`fit` stores with every checkpoint what defines its run (`run_definition`); `resume`
loads a checkpoint only when it continues the run the caller defines, so a changed
learning rate, seed, batch size, objective (with its parameters) or data set is an
error, not a silent mix. The training state in the file (epoch, history, optimizer and
generator states) is checked before any of it is used.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import types
from typing import Any, Callable

import torch

from ..model import VAE
from .checkpoint import load_checkpoint
from .state import RunObjects, attributes, progress_keys

UNIDENTIFIED = "unidentified: "
# optimizer settings that change what a step computes (the kernel choices do not)
_ADAM_MATH = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
              "decoupled_weight_decay")


class ResumeRefused(ValueError):
    """A checkpoint that fit will not resume from. `differences` lists (key, in the
    checkpoint, in this call) where the run differs; `stored_epoch` is set when the
    checkpoint holds more epochs than asked for."""

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]] | None = None,
                 stored_epoch: int | None = None):
        super().__init__(message)
        self.differences = differences or []
        self.stored_epoch = stored_epoch


def fingerprint(x: torch.Tensor | None) -> str | None:
    """Shape, dtype and a hash of the bytes of x (on the CPU, so the same on any device)."""
    if x is None:
        return None
    flat = x.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy(), digest_size=16).hexdigest()
    return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} blake2b:{digest}"


def _qualified(target: Any) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def describe(value: Any, _depth: int = 0) -> str | None:
    """What `value` is, as a string equal for equal definitions: plain data by value,
    tensors by fingerprint, module-level functions by their qualified name, partials and
    objects by their class and (recursively) their attributes. None when it cannot be
    identified: a lambda, a closure or a function defined inside another, or an object
    holding one (two of them with the same name may compute different things)."""
    if _depth > 8:
        return None
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, torch.Tensor):
        return fingerprint(value)
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = [describe(v, _depth + 1) for v in value]
        return None if None in items else ("[" if isinstance(value, list) else "(") \
            + ", ".join(items) + ("]" if isinstance(value, list) else ")")
    if isinstance(value, dict):
        items = [(describe(k, _depth + 1), describe(v, _depth + 1)) for k, v in value.items()]
        if any(None in pair for pair in items):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(items)) + "}"
    if isinstance(value, functools.partial):
        parts = [describe(value.func, _depth + 1),
                 *(describe(a, _depth + 1) for a in value.args)]
        keywords = {k: describe(v, _depth + 1) for k, v in sorted(value.keywords.items())}
        if None in parts or None in keywords.values():
            return None
        return (f"functools.partial({', '.join(parts)}"
                + "".join(f", {k}={v}" for k, v in keywords.items()) + ")")
    if isinstance(value, types.FunctionType):
        name = value.__qualname__
        if "<lambda>" in name or "<locals>" in name or value.__closure__:
            return None
        return _qualified(value)
    if isinstance(value, (types.BuiltinFunctionType, types.MethodWrapperType)):
        return _qualified(value)
    if isinstance(value, types.MethodType):
        owner = describe(value.__self__, _depth + 1)
        return None if owner is None else f"{owner}.{value.__func__.__name__}"
    if isinstance(value, (type, types.ModuleType)):
        return _qualified(value) if isinstance(value, type) else value.__name__
    kind, progress = type(value), progress_keys(value)
    if isinstance(value, torch.nn.Module) or "<locals>" in kind.__qualname__ \
            or not (hasattr(value, "__dict__") or hasattr(kind, "__slots__")):
        return None
    parameters = {k: describe(v, _depth + 1) for k, v in sorted(attributes(value).items())
                  if k not in progress}  # its progress (state_dict) is not what defines it
    if None in parameters.values():
        return None
    return f"{_qualified(kind)}(" + ", ".join(f"{k}={v}" for k, v in parameters.items()) + ")"


def objective_name(objective: Callable) -> str:
    """The objective's identity as recorded in a checkpoint: `describe(objective)` (for a
    module-level function, its module and qualified name; for an object such as a
    BetaELBO or Scaled, its class and parameters, and what it wraps), or, for one that
    cannot be identified (a lambda, a closure), its name after UNIDENTIFIED."""
    described = describe(objective)
    if described is not None:
        return described
    target = objective if hasattr(objective, "__qualname__") else type(objective)
    return f"{UNIDENTIFIED}{_qualified(target)}"


RUN_LABELS = {"train": "train data", "test": "test data"}


def run_definition(*, lr, seed, batch_size, n_samples, objective, stochastic_binarization,
                   train, test) -> dict[str, Any]:
    """What defines a run and must be the same for a resume to continue it."""
    return {"lr": lr, "seed": seed, "batch_size": batch_size, "n_samples": n_samples,
            "objective": objective_name(objective),
            "stochastic_binarization": bool(stochastic_binarization),
            "train": fingerprint(train), "test": fingerprint(test)}


def record_problem(record: Any) -> str | None:
    """What keeps `record` from being an epoch's record as fit saves and resumes it, or
    None: str keys; values None, bools, strings or finite numbers; the train_* and test_*
    metrics numbers. fit applies it when a record is made, resume when it is read."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a dict"
    for key, value in record.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, (
                bool, int, float, str))):
            return f"{key!r}: {value!r} ({type(value).__name__}), not a number or a string"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key!r} = {value!r}, not a finite number"
        if key.startswith(("train_", "test_")) and (isinstance(value, bool)
                                                    or not isinstance(value, (int, float))):
            return f"{key!r} = {value!r}, not a number"
    return None


def _check_history(bad: Callable[[str], ValueError], epoch: Any, history: Any) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise bad(f"its epoch is {epoch!r}, not a positive int")
    if not isinstance(history, list) or len(history) != epoch:
        raise bad(f"its history holds {len(history) if isinstance(history, list) else history!r}"
                  f" records for epoch {epoch}; fit writes one per epoch")
    for i, record in enumerate(history):
        if not isinstance(record, dict) or record.get("epoch") != i + 1:
            raise bad(f"its history record {i} is not the record of epoch {i + 1}")
        if (problem := record_problem(record)) is not None:
            raise bad(f"its history record of epoch {i + 1} holds {problem}")


def _check_generator(checkpoint: str, payload: dict, gen: torch.Generator, afresh: str) -> None:
    state, ours, where = payload["generator"], gen.get_state(), payload.get("generator_device")
    if where is not None and where != gen.device.type:
        raise ValueError(
            f"{checkpoint!r} was written by a run on {where}, and this one runs on "
            f"{gen.device.type}: the random stream (a {where} generator's state) cannot continue "
            f"on another kind of device, so the run would not be the same; resume it on "
            f"{where} (device={where!r}, command line: --device {where}), or {afresh}")
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 \
            or state.shape != ours.shape:
        shape = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(
            f"{checkpoint!r}: its generator state ({shape}) is not the state of a "
            f"{gen.device.type} generator ({tuple(ours.shape)} bytes): it was written on another "
            f"kind of device (a CUDA generator's state is 16 bytes, a CPU one's 5056), whose "
            f"random stream cannot continue here; resume it where it was written, or {afresh}")


def _check_optimizer(bad: Callable[[str], ValueError], opt: Any, model: VAE,
                     optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list) or len(opt["param_groups"]) != 1 \
            or not isinstance(opt["param_groups"][0], dict):
        raise bad("its optimizer state is not the state of fit's Adam (one parameter group)")
    group, mine = opt["param_groups"][0], optimizer.param_groups[0]
    params = list(model.parameters())
    if group.get("params") != list(range(len(params))):
        raise bad(f"its optimizer holds parameters {group.get('params')!r}, not the model's "
                  f"{len(params)}")
    for key in _ADAM_MATH:
        if key in mine and (key not in group or _hyper(group[key]) != _hyper(mine[key])):
            raise bad(f"its optimizer's {key} is {group.get(key)!r}, but this run's is "
                      f"{mine[key]!r}")
    for index, entry in opt["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) \
                or not isinstance(entry, dict):
            raise bad(f"its optimizer state has an entry {index!r} that is no parameter's")
        for key in ("exp_avg", "exp_avg_sq"):
            value = entry.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != params[index].shape:
                raise bad(f"its optimizer's {key} of parameter {index} is not a tensor of shape "
                          f"{tuple(params[index].shape)}")
            if not torch.isfinite(value).all():
                raise bad(f"its optimizer's {key} of parameter {index} holds NaN or infinite "
                          "values")
        step = entry.get("step")
        step = step.item() if isinstance(step, torch.Tensor) and step.numel() == 1 else step
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step >= 0:
            raise bad(f"its optimizer's step count of parameter {index} is {step!r}")


def _hyper(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_hyper(v) for v in value)
    return value


def _check_same_model(checkpoint: str, stored: VAE, model: VAE, payload: dict,
                      afresh: str) -> None:
    if stored.config != model.config:
        differences = [(k, stored.config.get(k), model.config.get(k))
                       for k in {**stored.config, **model.config}
                       if stored.config.get(k) != model.config.get(k)]
        raise ResumeRefused(f"checkpoint {checkpoint!r} holds a model {stored.config}, "
                            f"not {model.config}; {afresh}", differences)
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


def _check_same_run(checkpoint: str, stored_run: dict, run: dict, afresh: str) -> None:
    for which, name in (("the checkpoint's", stored_run.get("objective")),
                        ("this call's", run.get("objective"))):
        if isinstance(name, str) and name.startswith(UNIDENTIFIED):
            raise ResumeRefused(
                f"cannot resume from {checkpoint!r}: {which} objective "
                f"{name.removeprefix(UNIDENTIFIED)} is a lambda, a closure or a function "
                "defined inside another (or an object holding one), so fit cannot tell "
                "whether it computes what the checkpoint's run did. Define it at module level "
                f"(or as an object whose attributes are plain data), or {afresh}",
                [("objective", stored_run.get("objective"), run.get("objective"))])
    differences = [(k, stored_run.get(k), v) for k, v in run.items() if stored_run.get(k) != v]
    if differences:
        raise ResumeRefused(
            f"cannot resume from {checkpoint!r}: it was written by another run ("
            + "; ".join(f"{RUN_LABELS.get(k, k)}: {a!r} in the checkpoint, {b!r} in this call"
                        for k, a, b in differences)
            + "). To continue it, call fit with the checkpoint's settings and data; otherwise "
            f"{afresh}", differences)


def resume(checkpoint: str | os.PathLike, model: VAE, optimizer: torch.optim.Optimizer,
           gen: torch.Generator, dev: torch.device, run: dict[str, Any], epochs: int,
           objects: RunObjects) -> tuple[list[dict[str, float]], int]:
    """Load the model, optimizer and generator states from `checkpoint` after checking
    that it continues the run `run` defines and that its training state is sound; return
    its history records and epoch. What defines the run is compared first; then the
    training state is checked; then the stateful `objects` (fit's objective, on_epoch_end
    and what they hold) get back their progress (state.RunObjects), and nothing else.

    The optimizer's state is loaded into `optimizer` as it was built by this call: the
    kernel it runs (fused or not) and whether its step is capturable in a CUDA graph
    are this call's choice, whatever the checkpoint was saved with."""
    checkpoint = os.fspath(checkpoint)
    stored, payload = load_checkpoint(checkpoint, map_location=dev)
    afresh = ("pass resume=False (command line: --no-resume) to start afresh and overwrite "
              "it, or another checkpoint path (--out)")

    def bad(what: str) -> ValueError:
        return ValueError(f"{checkpoint!r}: {what}; the file is damaged or was edited, so "
                          f"training does not resume from it; {afresh}")

    _check_same_model(checkpoint, stored, model, payload, afresh)
    _check_same_run(checkpoint, payload["run"], run, afresh)
    _check_history(bad, payload["epoch"], payload["history"])
    _check_generator(checkpoint, payload, gen, afresh)
    _check_optimizer(bad, payload["optimizer"], model, optimizer)
    broken = [k for k, v in payload["model"].items() if not torch.isfinite(v).all()]
    if broken:
        raise bad(f"its weights hold NaN or infinite values ({', '.join(broken[:3])})")
    if payload["epoch"] > epochs:
        raise ResumeRefused(f"{checkpoint!r} holds epoch {payload['epoch']}, more than "
                            f"epochs={epochs} asks for; pass epochs={payload['epoch']} to get it "
                            f"as it is or more to train on, or {afresh}",
                            stored_epoch=payload["epoch"])
    if (problem := objects.restore(payload.get("object_state"), describe)) is not None:
        raise ValueError(f"cannot resume from {checkpoint!r}: {problem}; {afresh}")
    model.load_state_dict(payload["model"])
    ours = optimizer.param_groups[0]
    opt_state = {**payload["optimizer"], "param_groups": [
        {**g, "fused": ours["fused"], "capturable": ours["capturable"]}
        for g in payload["optimizer"]["param_groups"]]}
    try:
        optimizer.load_state_dict(opt_state)
        gen.set_state(payload["generator"].cpu())
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise ValueError(f"{checkpoint!r}: its training state cannot be loaded "
                         f"({type(err).__name__}: {err}); {afresh}") from err
    return payload["history"], payload["epoch"]

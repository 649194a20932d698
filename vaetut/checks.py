"""What the core checks before it computes: a positive number (`check_positive`; a count,
`check_count`), and a batch of data that a model can score (`check_input`). Each raises
ValueError naming the argument and what was expected."""
from __future__ import annotations

import math
import numbers

import torch


def check_positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise ValueError naming `name` unless value is a finite real number > 0 (>= 0 with
    allow_zero), and an int when `integer` (a bool is neither)."""
    kind = "int" if integer else "number"
    wanted = f"a finite {kind} >= 0" if allow_zero else f"a positive {kind}"
    is_number = isinstance(value, int if integer else numbers.Real)
    if isinstance(value, bool) or not is_number or not math.isfinite(value) \
            or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def check_count(name: str, value) -> None:
    """Raise ValueError naming `name` unless value is a positive int (not a bool): a count
    such as n_samples, k or a number of steps. `check_positive` with integer=True."""
    check_positive(name, value, integer=True)


def check_input(model, x: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError naming `name` unless x is a finite, non-empty (B, x_dim) float
    tensor of the model's dtype that the model's likelihood can score."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.dim() != 2 or x.shape[1] != model.x_dim:
        raise ValueError(f"{name} must have shape (batch, {model.x_dim}), got {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): it needs at least one "
                         "example")
    dtype = next(model.parameters()).dtype
    if x.dtype != dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but the model's weights are {dtype}: "
                         f"convert the data with {name}.to({dtype}) (for float32, "
                         f"{name}.float()), or the model with model.to({x.dtype})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if model.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1] for a Bernoulli likelihood, got values in "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]")

"""Choosing the device in one place: cuda, then mps, then cpu."""
from __future__ import annotations

import torch


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The device to train on.

    "auto" picks CUDA if available, then Apple's MPS, then the CPU. An explicit device
    ("cpu", "cuda", "cuda:1", "mps", or a torch.device) is returned as it is if it can
    be used here, and rejected with a ValueError naming `device` if not.

    Parameters
    ----------
    device : str or torch.device
        "auto", or the device wanted.

    Returns
    -------
    torch.device
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', "
                         f"got {device!r}") from err
    if chosen.type == "cpu":
        return chosen
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available here; "
                             "use device='auto' or 'cpu'")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} was requested but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")
        return chosen
    if chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r} was requested but MPS is not available here")
        return chosen
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")

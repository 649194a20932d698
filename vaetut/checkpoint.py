"""Checkpoints that survive a crash: written atomically, loaded without unpickling code."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from .model import VAE

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: VAE, **state: Any) -> None:
    """Write the model's config and weights, plus any `state` (optimizer and generator
    states, history, epoch), to `path` atomically.

    The file is written to a temporary file in the same folder and renamed over `path`,
    so a process killed mid-write leaves the previous checkpoint intact.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "config": dict(model.config),
               "model": model.state_dict(), **state}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[VAE, dict[str, Any]]:
    """The model rebuilt from its stored config with its weights, and the whole payload.

    Uses torch.load(weights_only=True): a checkpoint holds tensors and plain data only.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {os.path.abspath(path)!r}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown checkpoint format {payload.get('format_version')!r}")
    config = payload["config"]
    model = VAE(config["x_dim"], config["z_dim"], tuple(config["hidden"]), config["likelihood"])
    model.load_state_dict(payload["model"])
    return model, payload

"""Checkpoints that survive a crash: written atomically, loaded without unpickling code."""
from __future__ import annotations

import collections
import glob
import os
import pickle
import secrets
from typing import Any

import torch

from .model import VAE

FORMAT_VERSION = 1
# what torch.load(weights_only=True) reads back (tensors, plain data and a few torch types)
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)
_TORCH = (torch.Size, torch.dtype, torch.device)
_RESERVED = ("format_version", "config", "model")


def _check_loadable(value: Any, where: str) -> None:
    """Raise ValueError naming `where` unless `value` is something that
    torch.load(weights_only=True) reads back: tensors, plain Python data and containers
    of them."""
    kind = type(value)
    if kind in _PLAIN or kind in _TORCH or kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (dict, collections.OrderedDict):
        for key, item in value.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(item, f"{where}[{key!r}]")
        return
    if kind in _CONTAINERS:
        for i, item in enumerate(value):
            _check_loadable(item, f"{where}[{i}]")
        return
    module = kind.__module__.split(".")[0]
    name = kind.__name__ if module == "builtins" else f"{module}.{kind.__name__}"
    raise ValueError(
        f"{where} is a {name}, which load_checkpoint (torch.load with weights_only=True) "
        "could not read back; store tensors and plain data only, e.g. str(path), float(x), "
        "torch.from_numpy(array) or array.tolist()")


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def _remove_stale_temporaries(path: str) -> None:
    """Remove the temporaries of `path` left by saves killed mid-write: those whose
    writing process (the pid in the name) no longer runs on this machine."""
    folder, prefix = os.path.dirname(path), _temp_prefix(path)
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*.tmp")):
        pid = os.path.basename(tmp)[len(prefix):].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that process still runs (PermissionError: as another user): keep
        except PermissionError:
            continue
        except (ProcessLookupError, OverflowError):
            pass  # no such process: the save that wrote this was killed
        try:
            os.remove(tmp)
        except OSError:
            pass


def save_checkpoint(path: str | os.PathLike, model: VAE, **state: Any) -> None:
    """Write the model's config and weights, plus any `state` (optimizer and generator
    states, history, epoch), to `path` atomically.

    The file is written to a temporary file `.NAME.PID.RANDOM.tmp` in the same folder and
    renamed over `path`, so a process killed mid-write leaves the previous checkpoint
    intact; the temporaries such kills leave are removed by the next save to `path`. The
    file gets the usual mode (0666 less the umask). `state` may hold tensors and plain
    Python data only (what load_checkpoint reads back); anything else is a ValueError,
    raised before anything is written.
    """
    if not isinstance(model, VAE):
        raise ValueError(f"model must be a vaetut.VAE, got {type(model).__name__}")
    reserved = [k for k in _RESERVED if k in state]
    if reserved:
        raise ValueError(f"state may not hold {reserved}: save_checkpoint writes those keys "
                         "itself from the model")
    for key, value in state.items():
        _check_loadable(value, f"state[{key!r}]")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "config": dict(model.config),
               "model": model.state_dict(), **state}
    _remove_stale_temporaries(os.path.join(folder, os.path.basename(path)))
    tmp = os.path.join(folder, f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
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
    """The model rebuilt from its stored config with its weights (in the dtype they were
    saved in), and the whole payload.

    Uses torch.load(weights_only=True): a checkpoint holds tensors and plain data only.
    A file that is not a checkpoint written by save_checkpoint (empty, truncated,
    foreign, or missing the config or the weights) is a ValueError naming the file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {os.path.abspath(path)!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path!r} is empty (0 bytes): not a checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path!r} holds objects other than tensors and plain data, so it was not "
            "written by vaetut.save_checkpoint; it is not loaded, since unpickling it could "
            "run arbitrary code") from err
    except Exception as err:  # torch's reader fails in many ways on a damaged file
        raise ValueError(f"{path!r} is not a readable checkpoint (truncated, damaged or not "
                         f"written by torch.save): {type(err).__name__}: {err}") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{path!r} holds a {type(payload).__name__}, not a vaetut checkpoint "
                         "(a dict written by vaetut.save_checkpoint)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown checkpoint format {payload.get('format_version')!r} "
                         f"(vaetut.save_checkpoint writes format {FORMAT_VERSION})")
    for key in ("config", "model"):
        if key not in payload:
            raise ValueError(f"{path!r} lacks {key!r}: it is not a complete vaetut checkpoint")
    config, weights = payload["config"], payload["model"]
    try:
        model = VAE(config["x_dim"], config["z_dim"], tuple(config["hidden"]),
                    config["likelihood"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path!r}: its model config {config!r} does not describe a VAE "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(weights, dict):
        raise ValueError(f"{path!r}: its 'model' holds a {type(weights).__name__}, not the "
                         "model's weights (a state dict)")
    dtypes = {t.dtype for t in weights.values()
              if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # load_state_dict would cast the weights to float32
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path!r}: its weights do not fit the model its config describes "
                         f"({config}): {err}") from err
    return model, payload

"""The progress of the objects fit is given: saved with each checkpoint, restored on resume.

An object keeps its progress (what changes from epoch to epoch, such as a KL-annealing
schedule's beta) in `state_dict()`, a dict keyed by the attributes it covers, and takes it
back in `load_state_dict(state)`: the convention of torch's optimizers and schedulers.
Its other attributes are its parameters: they define the run (resume.describe leaves the
progress out) and restoring a checkpoint never changes them.

`RunObjects` finds such objects in what fit is given (the objective, on_epoch_end and
whatever they hold: attributes, `__slots__`, a partial's arguments, a bound method's
object, a closure's cells) and watches everything else there that it can see. A value
that changes during training outside any state_dict is progress that cannot be saved:
the checkpoint records where it is, and a resume of that run is refused, naming it.
"""
from __future__ import annotations

import functools
import hashlib
import types
from typing import Any, Iterator

import numpy as np
import torch

_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_OPAQUE = (type, types.ModuleType, types.BuiltinFunctionType, torch.nn.Module,
           torch.Generator, torch.dtype, torch.device)
MAX_DEPTH = 8


def declares_state(obj: Any) -> bool:
    """Whether `obj` keeps its progress in state_dict()/load_state_dict() (a module is the
    model's business, not a run object's)."""
    return not isinstance(obj, (type, torch.nn.Module)) \
        and callable(getattr(obj, "state_dict", None)) \
        and callable(getattr(obj, "load_state_dict", None))


def progress_keys(obj: Any) -> set:
    """The attributes an object's state_dict covers (none for an object without one)."""
    return set(obj.state_dict()) if declares_state(obj) else set()


def attributes(obj: Any) -> dict[str, Any]:
    """An object's attributes, those in `__slots__` included."""
    found = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
    for kind in type(obj).__mro__:
        for name in getattr(kind, "__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                found[name] = getattr(obj, name)
    return found


def _parts(obj: Any) -> Iterator[tuple[str, Any]]:
    """(name, value) for what `obj` holds that a run could change."""
    if isinstance(obj, dict):
        yield from ((f"[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from ((f"[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, functools.partial):
        yield from [(".func", obj.func), *((f".args[{i}]", a) for i, a in enumerate(obj.args)),
                    *((f".keywords[{k!r}]", v) for k, v in obj.keywords.items())]
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
    elif isinstance(obj, types.FunctionType):
        names = obj.__code__.co_freevars
        for name, cell in zip(names, obj.__closure__ or ()):
            try:
                yield f".<{name}>", cell.cell_contents
            except ValueError:  # a cell not yet filled
                continue
        yield from ((f".__defaults__[{i}]", v) for i, v in enumerate(obj.__defaults__ or ()))
        yield from ((f".__kwdefaults__[{k!r}]", v)
                    for k, v in (obj.__kwdefaults__ or {}).items())
    else:
        skip = progress_keys(obj)
        yield from ((f".{k}", v) for k, v in attributes(obj).items() if k not in skip)


def _leaf(value: Any) -> str | None:
    """What a value that holds no further objects is now, or None for one that does."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, torch.Tensor):  # in-place changes bump the version counter
        return f"tensor {id(value)} v{value._version}"
    if isinstance(value, np.ndarray):
        digest = hashlib.blake2b(value.tobytes(), digest_size=8).hexdigest() \
            if value.nbytes <= 2**20 else f"{id(value)}"
        return f"ndarray {value.shape} {digest}"
    if isinstance(value, _OPAQUE):
        return f"{type(value).__name__} {id(value)}"
    return None


class RunObjects:
    """The stateful objects reachable from `roots` (name -> object: fit's objective and
    on_epoch_end), by path, and a picture of every other value there."""

    def __init__(self, roots: dict[str, Any]):
        self.declared: dict[str, Any] = {}
        self.unsaved: list[str] = []
        self._roots = roots
        self._picture = self._look()

    def _look(self) -> dict[str, str]:
        picture: dict[str, str] = {}
        seen: set[int] = set()

        def visit(obj: Any, path: str, depth: int) -> None:
            leaf = _leaf(obj)
            if leaf is not None or depth > MAX_DEPTH or id(obj) in seen:
                picture[path] = leaf if leaf is not None else f"{type(obj).__name__}"
                return
            seen.add(id(obj))
            if declares_state(obj):
                self.declared.setdefault(path, obj)
            for name, value in _parts(obj):
                visit(value, path + name, depth + 1)

        for name, root in self._roots.items():
            visit(root, name, 0)
        return picture

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves: each declared object's state_dict, by path, and the
        paths of values that changed since the start without being declared progress."""
        now = self._look()
        changed = sorted(p for p in set(now) | set(self._picture)
                         if now.get(p) != self._picture.get(p))
        self.unsaved += [p for p in changed if p not in self.unsaved]
        return {"objects": {path: obj.state_dict() for path, obj in self.declared.items()},
                "unsaved": list(self.unsaved)}

    def restore(self, saved: Any, describe) -> str | None:
        """Give each declared object its state from `saved` (what `state` returned for the
        checkpoint); return what is wrong with `saved`, or None. `describe` tells an
        object's parameters: they must not change."""
        if not isinstance(saved, dict) or not isinstance(saved.get("objects"), dict) \
                or not isinstance(saved.get("unsaved"), list):
            return "its object_state is not what fit writes"
        if saved["unsaved"]:
            return ("its run changed " + ", ".join(map(str, saved["unsaved"][:4]))
                    + " during training, progress that has no state_dict() and was not saved, "
                    "so the resumed run would not be the same; give that object state_dict() "
                    "and load_state_dict(state) (see the API page, fit's options)")
        for path, obj in self.declared.items():
            if path not in saved["objects"]:
                return f"it holds no state for {path}"
            parameters = describe(obj)
            try:
                obj.load_state_dict(saved["objects"][path])
            except (ValueError, TypeError, KeyError) as err:
                return f"the state of {path} cannot be loaded ({type(err).__name__}: {err})"
            if describe(obj) != parameters:
                return (f"its state of {path} changes that object's parameters, not only its "
                        f"progress ({parameters} became {describe(obj)})")
        self._picture = self._look()
        return None

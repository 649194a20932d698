"""Checkpoints that survive a crash: written atomically, loaded without unpickling code."""
from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import pickle
import socket
import stat
import struct
import sys
import tempfile
import zipfile
from typing import Any, BinaryIO, Iterator

import filelock
import torch

from ..files import atomic_write, file_kind, open_regular, refuse_folder
from ..model import VAE, check_architecture, check_min_log_var

FORMAT_VERSION = 1
# what torch.load(weights_only=True) reads back (tensors, plain data and a few torch types)
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)
_TORCH = (torch.Size, torch.dtype, torch.device)
_RESERVED = ("format_version", "config", "model")
_CONFIG_KEYS = ("x_dim", "z_dim", "hidden", "likelihood")


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


# ----- one writer per checkpoint ----------------------------------------------------------
class CheckpointLockedError(RuntimeError):
    """Another process is writing to this checkpoint (it holds the checkpoint's lock)."""


def lock_path(path: str | os.PathLike) -> str:
    """The lock file of checkpoint `path`: `.NAME.lock` beside it."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


def _describe_holder(fd: int) -> None:
    """filelock's on_acquired hook: write who holds the lock into the lock file, so that a
    refused writer can name it; but only into a regular file of one name, checked on the
    descriptor: a hard link planted at the lock's name would have its target truncated."""
    if not stat.S_ISREG((st := os.fstat(fd)).st_mode) or st.st_nlink != 1:
        raise _NotALockFile(f"a file with {st.st_nlink} names (a hard link)"
                            if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode))
    text = (f"pid {os.getpid()} on {socket.gethostname()}: "
            + " ".join(sys.argv)[:300] + "\n").encode("utf-8", "replace")
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)


class _NotALockFile(Exception):  # what is at the lock's name instead of a lock file
    pass


def checkpoint_lock(path: str | os.PathLike) -> filelock.FileLock:
    """The lock that makes a process the only writer of checkpoint `path`: an advisory
    flock(2) on `.NAME.lock` beside it, through the `filelock` library. The lock is
    re-entrant within a process (the command line holds it for the whole run, fit again
    inside), released when the process ends however it ends, and left as a file in place
    (unlinking a lock file breaks the exclusion for processes that opened it).

    `acquire_checkpoint_lock` takes it without waiting."""
    return filelock.FileLock(lock_path(path), timeout=0, is_singleton=True,
                             on_acquired=_describe_holder)


def acquire_checkpoint_lock(path: str | os.PathLike) -> filelock.FileLock:
    """Take `checkpoint_lock(path)` at once, or raise CheckpointLockedError naming the
    process that holds it."""
    lock = checkpoint_lock(path)
    os.makedirs(os.path.dirname(lock.lock_file), exist_ok=True)
    try:
        if os.path.lexists(lock.lock_file):  # a FIFO or a device fails in flock, before the hook
            mode = os.lstat(lock.lock_file).st_mode
            if not stat.S_ISREG(mode):
                raise _NotALockFile(file_kind(mode))
        lock.acquire()
    except _NotALockFile as err:
        raise ValueError(f"{lock.lock_file!r}, the lock file of checkpoint {os.fspath(path)!r}, "
                         f"is {err}, not a lock file; nothing is written through it: remove it "
                         "(a lock file is a regular file, made if missing)") from None
    except filelock.Timeout:
        try:
            with open(lock.lock_file, encoding="utf-8", errors="replace") as f:
                holder = f.read(400).strip()
        except OSError:
            holder = ""
        raise CheckpointLockedError(
            f"{os.fspath(path)!r} is being written by another run"
            + (f" ({holder})" if holder else "") + f", which holds its lock {lock.lock_file!r}; "
            "two runs writing one checkpoint would overwrite each other. Wait for that run "
            "to end, or give this one another checkpoint path (command line: --out)") from None
    return lock


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """`with writer_lock(path):` makes this process the only writer of checkpoint `path` for
    the block (CheckpointLockedError at once if another process is one). Re-entrant."""
    lock = acquire_checkpoint_lock(path)
    try:
        yield
    finally:
        lock.release()


def check_checkpoint_path(path: str | os.PathLike, name: str = "checkpoint") -> None:
    """ValueError naming `name` unless a checkpoint can be written at `path`: not a folder,
    a symbolic link or another non-regular file, in a folder that exists or can be made
    and in which a file can be created. Checked before training, not after an epoch."""
    path = os.fspath(path)
    if not path or path.endswith(os.sep):
        raise ValueError(f"{name} must name a file, got {path!r}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise ValueError(f"{name} {path!r} cannot be used: {err.strerror or err}") from err
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise ValueError(
                f"{name} {path!r} is a symbolic link (to {os.readlink(path)!r}); checkpoints are "
                "written by replacing the file, which would replace the link and leave its "
                "target behind, so a link is refused: pass the target's path itself")
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{name} {path!r} is a folder, not a file: move it away or "
                             "choose another path")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{name} {path!r} is {file_kind(st.st_mode)}, not a regular "
                             "file; name a file (it is created if missing)")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{name} {path!r}: no file can be created in {folder!r} "
                         f"({err.strerror or err})") from err


def save_checkpoint(path: str | os.PathLike, model: VAE, **state: Any) -> None:
    """Write the model's config and weights, plus any `state` (optimizer and generator
    states, history, epoch), to `path` atomically (vaetut.files.atomic_write: a process
    killed mid-write leaves the previous checkpoint intact, a link at `path` is replaced,
    never written through), holding the checkpoint's writer lock (`writer_lock`): a save to
    a checkpoint another process is writing is a CheckpointLockedError. `state` may hold
    tensors and plain Python data only (what load_checkpoint reads back); anything else is
    a ValueError, raised before anything is written.
    """
    if not isinstance(model, VAE):
        raise ValueError(f"model must be a vaetut.VAE, got {type(model).__name__}")
    reserved = [k for k in _RESERVED if k in state]
    if reserved:
        raise ValueError(f"state may not hold {reserved}: save_checkpoint writes those keys "
                         "itself from the model")
    for key, value in state.items():
        _check_loadable(value, f"state[{key!r}]")
    payload = {"format_version": FORMAT_VERSION, "config": dict(model.config),
               "model": model.state_dict(), **state}
    buffer = io.BytesIO()  # serialized first: a failed write is then an OSError, not torch's
    torch.save(payload, buffer)
    refuse_folder(os.fspath(path))  # before the lock: its file would be made beside the folder
    with writer_lock(path):
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def _map_location(map_location: Any) -> torch.device:
    """map_location as a device this machine has, or a ValueError saying why not."""
    if not isinstance(map_location, (str, torch.device)):
        raise ValueError(f"map_location must be a device name such as 'cpu' or 'cuda:0', or a "
                         f"torch.device, got {map_location!r}")
    try:
        device = torch.device(map_location)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"map_location={map_location!r} is not a device name (use 'cpu', "
                         "'cuda', 'cuda:N' or 'mps')") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"map_location={map_location!r}, but CUDA is not available on this "
                             "machine; use map_location='cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"map_location={map_location!r}, but this machine has {count} CUDA "
                             f"device(s) (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"map_location={map_location!r}, but MPS is not available here; use "
                         "map_location='cpu'")
    elif device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"map_location={map_location!r}: there is one CPU device, 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"map_location={map_location!r}: vaetut loads onto cpu, cuda or mps")
    return device


def _read_file(path: str) -> bytes:
    """The bytes of the regular file at `path` (a link is followed for reading), read only
    after its last bytes were found to end a zip archive (`_check_zip_end`), with a
    ValueError or an OSError that says what is wrong with it."""
    try:
        f, size = open_regular(path, "a checkpoint")
        with f:
            if size == 0:
                raise ValueError(f"{path!r} is empty (0 bytes): not a checkpoint")
            _check_zip_end(path, f, size)
            f.seek(0)
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {os.path.abspath(path)!r}") from None
    except OSError as err:
        raise type(err)(err.errno, f"cannot read the checkpoint ({err.strerror})", path) from None


_END, _END64, _LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_MAX_DIRECTORY = 1 << 20  # bytes of zip directory: a checkpoint's few hundred records need KBs


def _check_zip_end(path: str, f: BinaryIO, size: int) -> None:
    """ValueError unless the last bytes of `f` (`size` bytes) are the end records of a zip
    archive as torch.save writes it (no comment; zip64 records when present), whose
    directory ends where they begin and whose first record is at byte 0: read in at most
    98 bytes, so a file that is not such an archive costs nothing however large it claims
    or is."""
    f.seek(max(0, size - 98))
    tail = f.read(98)
    end = len(tail) - 22
    if end < 0 or tail[end:end + 4] != _END:
        raise ValueError(f"{path!r} is not a readable checkpoint: it does not end with a zip "
                         "archive's end record (truncated, damaged or not written by torch.save)")
    count, directory_size, directory_at = struct.unpack_from("<HII", tail, end + 10)
    ends_at = said_end = size - 22
    if end == 76 and tail[56:60] == _LOCATOR and tail[:4] == _END64:  # zip64, as torch writes
        count, directory_size, directory_at = struct.unpack_from("<QQQ", tail, 32)
        ends_at, said_end = size - 98, struct.unpack_from("<Q", tail, 64)[0]
    if directory_size > _MAX_DIRECTORY or directory_size < 46 * count:
        raise ValueError(f"{path!r} is damaged: its zip directory claims {count} records in "
                         f"{directory_size} bytes")
    gap = ends_at - directory_at - directory_size or ends_at - said_end
    if gap:
        raise ValueError(f"{path!r} is damaged or not a checkpoint: its zip directory, said to "
                         f"start at byte {directory_at}, ends {gap} bytes before its end "
                         "records (bytes added before the archive, or lost)")


def _check_archive(path: str, data: bytes) -> None:
    """ValueError unless `data` is a zip archive as torch.save writes it: each record's entry
    in the directory as torch writes it (a plain file, no attributes, stored uncompressed
    under the archive's folder) and matching its local header, the records apart from one
    another within the file, and every record's CRC-32 right (a flipped byte anywhere in a
    tensor is found here)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        records = sorted(archive.infolist(), key=lambda r: r.header_offset)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as err:
        raise ValueError(f"{path!r} is not a readable checkpoint (truncated, damaged or not "
                         f"written by torch.save: {err})") from err
    folder = records[0].filename.split("/")[0] + "/" if records else ""
    starts = [r.header_offset for r in records[1:]] + [archive.start_dir]
    if not records or records[0].header_offset != 0:
        raise ValueError(f"{path!r} is damaged or not a checkpoint: its archive does not "
                         "start at its first byte")
    for record, next_start in zip(records, starts):
        problem = _record_problem(record, data, folder, next_start)
        if problem:
            raise ValueError(f"{path!r} is damaged or crafted: its record {record.filename!r} "
                             f"{problem}; torch.save writes no such record, so it is not loaded")
    try:
        bad = archive.testzip()
    except Exception as err:  # zipfile fails in several ways on a damaged header
        raise ValueError(f"{path!r} is damaged: {type(err).__name__}: {err}") from err
    if bad is not None:
        raise ValueError(f"{path!r} is damaged: its record {bad!r} fails its CRC-32 check "
                         "(bytes changed after it was written); it is not loaded")


def _record_problem(record: zipfile.ZipInfo, data: bytes, folder: str, next_start: int) -> str:
    """What is wrong with one record's directory entry, checked against its local header and
    the next record's start, or ''."""
    if record.compress_type != zipfile.ZIP_STORED:
        return (f"is compressed (zip method {record.compress_type}); torch.save stores "
                "records uncompressed, and a compressed one can expand far beyond the file")
    name = record.filename
    if record.is_dir() or record.external_attr or record.flag_bits & ~0x808:
        return (f"is flagged as a folder or has attributes (external {record.external_attr:#x}"
                f", flags {record.flag_bits:#x})")
    if not name.startswith(folder) or ".." in name.split("/"):
        return f"is named outside the archive's folder {folder!r}"
    if record.file_size != record.compress_size:
        return f"claims {record.file_size} bytes stored in {record.compress_size}"
    header = data[record.header_offset:record.header_offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return "has no local header where its entry says"
    (method,), (name_len, extra_len) = struct.unpack_from("<H", header, 8), \
        struct.unpack_from("<HH", header, 26)
    begins = record.header_offset + 30 + name_len + extra_len
    if method != 0 or data[record.header_offset + 30:][:name_len] != name.encode() or \
            begins + record.file_size > next_start:
        return "does not match its local header, or overlaps the next record"
    return ""


def stored_epoch(path: str | os.PathLike) -> int | None:
    """The epoch checkpoint `path` holds, or None, for messages: only its end records and
    pickle are read (its tensors are mapped), so a run that then loads it reads it once."""
    path = os.fspath(path)
    try:
        f, size = open_regular(path, "a checkpoint")
        with f:
            _check_zip_end(path, f, size)
        epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:  # whatever is wrong, load_checkpoint (fit) names it
        return None
    return epoch if type(epoch) is int else None


def check_config(config: Any, where: str) -> dict:
    """The model config `config` (from a checkpoint) as VAE's keyword arguments, or a
    ValueError naming `where` saying what is wrong with it."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: its model config is a {type(config).__name__}, not a dict")
    missing = [k for k in _CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in (*_CONFIG_KEYS, "min_log_var")]
    if missing or unknown:
        raise ValueError(f"{where}: its model config {config!r} does not describe a VAE ("
                         + ", ".join([f"missing {k!r}" for k in missing]
                                     + [f"unknown key {k!r}" for k in unknown]) + ")")
    kwargs = dict(config)
    if isinstance(kwargs["hidden"], list):
        kwargs["hidden"] = tuple(kwargs["hidden"])
    try:
        check_architecture(kwargs["x_dim"], kwargs["z_dim"], kwargs["hidden"], kwargs["likelihood"])
        check_min_log_var(kwargs.get("min_log_var"))
    except ValueError as err:
        raise ValueError(f"{where}: its model config {config!r} does not describe a VAE "
                         f"({err})") from err
    return kwargs


def _check_weight_shapes(path: str, kwargs: dict, weights: Any, size: int) -> None:
    """ValueError unless `weights` holds exactly the tensors, of exactly the shapes, that
    the config describes; checked on the meta device, before any memory is allocated for
    a model, so a config asking for a huge model costs nothing."""
    if not isinstance(weights, dict):
        raise ValueError(f"{path!r}: its 'model' holds a {type(weights).__name__}, not the "
                         "model's weights (a state dict)")
    layers = len(kwargs["hidden"])  # encoder: layers + 2 Linear, decoder: layers + 1
    count = 2 * (2 * layers + 3) + (kwargs["likelihood"] == "gaussian")
    if count != len(weights):  # before building even on the meta device: a long `hidden`
        raise ValueError(f"{path!r}: its weights do not fit the model its config describes "
                         f"({kwargs}): {len(weights)} tensors stored, {count} expected")
    widths = {"x_dim": kwargs["x_dim"], "z_dim": kwargs["z_dim"],
              **{f"hidden[{i}]": h for i, h in enumerate(kwargs["hidden"])}}
    for key, width in widths.items():  # each width is at least that many numbers stored
        if width > size:
            raise ValueError(f"{path!r}: its config's {key} is {width}, but its {size} bytes "
                             "cannot hold a model that wide: damaged or crafted, not loaded")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VAE(**kwargs).state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
             for k, v in weights.items()}
    if found != expected:
        wrong = [f"{k}: {found.get(k, 'missing')} stored, {shape} expected"
                 for k, shape in expected.items() if found.get(k) != shape]
        wrong += [f"{k}: not a weight of this model" for k in found if k not in expected]
        raise ValueError(f"{path!r}: its weights do not fit the model its config describes "
                         f"({kwargs}): " + "; ".join(wrong[:4])
                         + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else ""))
    floats = sum(math.prod(shape) for shape in expected.values())
    if floats > size:  # at least one byte per number: the file cannot hold this model
        raise ValueError(f"{path!r}: its config describes {floats} weights, more than its "
                         f"{size} bytes can hold")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[VAE, dict[str, Any]]:
    """The model rebuilt from its stored config with its weights (in the dtype they were
    saved in), and the whole payload.

    Before anything is unpickled, the file is checked as an archive: a regular file (a
    link is followed), every record stored uncompressed and its CRC-32 right, so a
    damaged byte is found. It is read with torch.load(weights_only=True): a checkpoint
    holds tensors and plain data only. The config is then checked against the shapes of
    the stored weights before a model is built, so a crafted config cannot make it
    allocate more than the file holds. A file that is not a checkpoint written by
    save_checkpoint (empty, truncated, damaged, foreign, or missing the config or the
    weights) is a ValueError naming the file; one that cannot be read, an OSError.
    """
    path = os.fspath(path)
    device = _map_location(map_location)
    data = _read_file(path)
    _check_archive(path, data)
    try:
        payload = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
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
    kwargs = check_config(config, repr(path))
    _check_weight_shapes(path, kwargs, weights, len(data))
    model = VAE(**kwargs)
    dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # load_state_dict would cast the weights to float32
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path!r}: its weights do not fit the model its config describes "
                         f"({config}): {err}") from err
    return model, payload

"""Writing a file safely: every file vaetut writes (checkpoints, history.json, samples.png,
downloaded MNIST files) goes through `atomic_write`."""
from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from typing import BinaryIO, Callable

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def file_kind(mode: int) -> str:
    """What a file of mode `mode` (from os.stat) is, in words: 'a FIFO', 'a directory', ..."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str) -> tuple[BinaryIO, int]:
    """Open `path` for binary reading if it is a regular file (a link is followed); return
    (file, size). Anything else is a ValueError naming `path` before it is read: the path
    is checked with os.stat before opening, opened with O_NONBLOCK (so a FIFO swapped in
    between cannot block), and checked again with fstat on what was opened."""
    st = os.stat(path)  # FileNotFoundError / PermissionError name the path themselves
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: is {file_kind(st.st_mode)}; {what} must be a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
                 | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: is {file_kind(st.st_mode)}; {what} must be a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def make_folders(path: str) -> list[str]:
    """Make the folder `path` and any missing parents (normalized first, so 'a/b/../c' makes
    a/c alone); return the folders made here, deepest first, for `remove_empty_folders`."""
    folder, made = os.path.abspath(path), []
    probe = folder
    while not os.path.lexists(probe):
        made.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(folder, exist_ok=True)
    return made


def remove_empty_folders(made: list[str]) -> None:
    """Remove the folders `make_folders` made (deepest first) as long as each is empty."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            return


def temp_pattern(path: str) -> re.Pattern:
    """The exact names the writer gives the temporaries of `path`: .NAME.PID.HEX8.tmp, with
    the pid in ASCII digits (as the writer makes it; `\\d` would also match other scripts')."""
    return re.compile(re.escape(f".{os.path.basename(path)}.") + r"([0-9]+)\.[0-9a-f]{8}\.tmp")


def remove_stale_temporaries(path: str) -> None:
    """Remove the temporaries of `path` left by writes killed mid-way: those whose writing
    process (the pid in the name) no longer runs on this machine. Only names of exactly
    the form the writer makes are considered, so the temporaries of a sibling such as
    NAME.54321 are never touched."""
    folder, pattern = os.path.dirname(path) or ".", temp_pattern(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # that process still runs (PermissionError: as another user): keep
        except PermissionError:
            continue
        except (ProcessLookupError, OverflowError):
            pass  # no such process: the write that made this was killed
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def refuse_folder(path: str) -> str:
    """`path` made absolute, or IsADirectoryError if it names a folder (".", "a/", a folder)."""
    target = os.path.abspath(path)
    if os.path.basename(path) in ("", ".", "..") or (
            os.path.isdir(target) and not os.path.islink(target)):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path!r}: it is a folder; name a "
                                "file")
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write the file `path` atomically: `write(f)` fills `f`, a binary file object over a
    new temporary `.NAME.PID.RANDOM.tmp` in the same folder, created here exclusively and
    without following links (mode 0666 less the umask) and written through the descriptor
    that created it, never reopened by name; it is flushed to disk and renamed over `path`.

    So a link planted at `path` is replaced, never written through, and one swapped in at
    the temporary's name while it is written receives nothing (the write fails instead of
    renaming the link into place); a process killed mid-write leaves what `path` held
    before, and the stale temporaries of killed writers are removed. An OSError names
    `path`; whatever else `write` raises passes unchanged."""
    path = os.fspath(path)
    target = refuse_folder(path)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}."
                               f"{secrets.token_hex(4)}.tmp")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
                _check_same_file(tmp, os.fstat(f.fileno()))
            os.replace(tmp, target)  # rename(2) replaces a link at target, never its target
        except OSError as err:  # name the file the caller asked for, not the temporary
            raise type(err)(err.errno, f"cannot write {path!r}: {err.strerror or err}") from err
    except BaseException:
        try:
            os.remove(tmp)  # a link swapped in there is removed, not what it points to
        except OSError:
            pass
        raise


def _check_same_file(tmp: str, written: os.stat_result) -> None:
    """OSError unless the name `tmp` still holds the file written through its descriptor."""
    now = os.lstat(tmp)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (written.st_dev,
                                                                     written.st_ino):
        raise FileExistsError(errno.EEXIST, "its temporary was replaced while it was written "
                              "(another process is changing this folder); nothing was written")

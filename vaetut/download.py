"""Downloading the standard MNIST files: each from a list of mirrors, within one deadline,
checked against its size and checksum before it is renamed into place (vaetut.files.
atomic_write). `vaetut.data.load_mnist(root, download=True)` calls `download_mnist`."""
from __future__ import annotations

import hashlib
import http.client
import math
import os
import stat
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

from .files import atomic_write, file_kind, make_folders, open_regular, remove_empty_folders

_CHUNK = 1 << 20

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Where `download_mnist` looks, in order (the mirrors torchvision and TensorFlow use; Yann
LeCun's own page now refuses most automated downloads)."""

MNIST_CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""MD5 of the four standard .gz files (the values torchvision's MNIST class checks). A
value of 64 hex digits is read as SHA-256."""

DOWNLOAD_MAX_BYTES = 64 << 20  # the largest standard file is 9,912,422 bytes


class DownloadError(OSError, ValueError):
    """No mirror gave a file with the expected checksum (network errors, a truncated body,
    a wrong checksum, a file too large). Both an OSError and a ValueError, as
    io.UnsupportedOperation is, so that callers that report bad input catch it too."""


def _hash_algorithm(name: str, digest: object) -> str:
    if isinstance(digest, str) and all(c in "0123456789abcdefABCDEF" for c in digest):
        if len(digest) == 32:
            return "md5"
        if len(digest) == 64:
            return "sha256"
    raise ValueError(f"checksums[{name!r}] must be an MD5 (32 hex digits) or SHA-256 (64 hex "
                     f"digits) digest, got {digest!r}")


def _new_hash(algorithm: str):
    if algorithm == "md5":  # an integrity check against known values, not a security use
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algorithm)


def _file_digest(path: str, algorithm: str) -> str:
    f, _ = open_regular(path, "a downloaded MNIST file")
    with f:
        h = _new_hash(algorithm)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _already_there(dest: str, algorithm: str, digest: str) -> bool:
    """True if `dest` is a regular file (or a link to one) with the expected checksum;
    False if missing, or a regular file of another checksum (it will be replaced).
    Anything else is refused: a download never replaces a link or a non-file."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(dest)
        except FileNotFoundError:
            raise ValueError(f"{dest}: is a symbolic link to nothing; the download does not "
                             "write through links: remove it") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{dest}: is {file_kind(st.st_mode)}; the download writes a regular file "
                         "there: remove it")
    if _file_digest(dest, algorithm) == digest.lower():
        return True
    if link:
        raise ValueError(f"{dest}: is a symbolic link to a file whose {algorithm} is not the "
                         f"expected {digest}; the download does not replace links: remove it "
                         "or point it at the right file")
    return False


class _MirrorFailed(Exception):
    """What a mirror sent instead of the file (not an OSError: atomic_write would call it a
    failure to write)."""


def _fetch(url: str, dest: str, algorithm: str, digest: str, timeout: float,
           max_bytes: int) -> None:
    """Download `url` to `dest` within `timeout` seconds in all (connecting, then every read
    against one deadline), through `atomic_write`: renamed into place only once its size
    and checksum are right. Raises _MirrorFailed, or OSError if `dest` cannot be written."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "vaetut"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: a bad URL
        raise _MirrorFailed(err) from err
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.strip().isdigit() else None
        if length is not None and length > max_bytes:
            raise _MirrorFailed(f"it announces {length} bytes, more than max_bytes={max_bytes}")
        atomic_write(dest, lambda out: _copy_checked(response, out, algorithm, digest, length,
                                                     max_bytes, (deadline, timeout)))


def _copy_checked(response, out, algorithm: str, digest: str, length: int | None,
                  max_bytes: int, deadline: tuple[float, float]) -> None:
    """Copy the body of `response` to `out`; _MirrorFailed if it is cut short, too long,
    late (`deadline`: the time.monotonic() it must end by, and the timeout it came from) or
    of another checksum."""
    h, n = _new_hash(algorithm), 0
    sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
    while True:
        left = deadline[0] - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(left)  # each read waits only for what is left of the deadline
            chunk = response.read1(1 << 16)  # what has come, without waiting for 64 KiB
        except TimeoutError:
            raise _MirrorFailed(f"not complete within timeout={deadline[1]} s ({n} bytes "
                                "came)") from None
        except (OSError, http.client.HTTPException) as err:
            raise _MirrorFailed(f"{type(err).__name__}: {err}") from err
        if not chunk:
            break
        n += len(chunk)
        if n > max_bytes:
            raise _MirrorFailed(f"it sent more than max_bytes={max_bytes} bytes")
        h.update(chunk)
        out.write(chunk)
    if length is not None and n != length:
        raise _MirrorFailed(f"truncated: {n} of the {length} bytes it announced")
    if h.hexdigest() != digest.lower():
        raise _MirrorFailed(f"wrong checksum: {n} bytes with {algorithm} {h.hexdigest()}, "
                            f"expected {digest.lower()} (truncated or not the standard file)")


def _mirror_list(mirrors) -> tuple[str, ...]:
    if isinstance(mirrors, str):
        mirrors = (mirrors,)
    if not isinstance(mirrors, Sequence) or not mirrors:
        raise ValueError(f"mirrors must be a non-empty list of http(s) base URLs, got {mirrors!r}")
    for m in mirrors:
        if not isinstance(m, str) or urllib.parse.urlsplit(m).scheme not in ("http", "https") \
                or not urllib.parse.urlsplit(m).netloc:
            raise ValueError(f"mirrors: each must be an http:// or https:// base URL, got {m!r}")
    return tuple(m if m.endswith("/") else m + "/" for m in mirrors)


def download_mnist(root: str | os.PathLike, mirrors: Sequence[str] | str = MNIST_MIRRORS,
                   checksums: Mapping[str, str] = MNIST_CHECKSUMS, timeout: float = 60.0,
                   max_bytes: int = DOWNLOAD_MAX_BYTES) -> dict[str, str]:
    """Fetch each file named in `checksums` into the folder `root` (made if missing);
    return {name: path}.

    A file already in `root` with the right checksum is kept; one with another checksum
    is downloaded again and replaced. Each mirror is tried in turn (also after a redirect
    to a malformed URL): the body goes to a temporary file in `root` (vaetut.files.
    atomic_write, which also removes those of downloads that were killed), its length is
    checked against Content-Length and `max_bytes`, its checksum (MD5 or SHA-256, by the
    digest's length) against `checksums`, and only then is it renamed into place (a link
    at the destination is never written through). `timeout` bounds each file from each
    mirror as a whole, not each read, so a mirror that drips bytes is left in time. If no
    mirror gives the right file, a DownloadError says what each mirror gave. `mirrors` and
    `checksums` can point elsewhere (a local server, another data set in IDX files)."""
    root = os.path.normpath(os.fspath(root))  # so that make_folders makes what is used
    mirrors = _mirror_list(mirrors)
    if not isinstance(checksums, Mapping) or not checksums:
        raise ValueError(f"checksums must be a non-empty mapping of file name to digest, got "
                         f"{checksums!r}")
    plan = {}
    for name, digest in checksums.items():
        if not isinstance(name, str) or not name or name != os.path.basename(name) \
                or name.startswith(".") or "/" in name or "\\" in name:
            raise ValueError(f"checksums: {name!r} must be a plain file name (no folder, not "
                             "hidden)")
        plan[name] = (_hash_algorithm(name, digest), digest)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive, finite number of seconds (the time "
                         f"allowed for each file from each mirror), got {timeout!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int (bytes), got {max_bytes!r}")
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"root {os.path.abspath(root)!r} is not a folder; name a folder to "
                         "download MNIST into (it is made if missing)")
    made = make_folders(root)
    try:
        return _download_all(root, plan, mirrors, timeout, max_bytes)
    except BaseException:
        remove_empty_folders(made)  # a failed first download leaves no empty folder
        raise


def _download_all(root: str, plan: dict[str, tuple[str, str]], mirrors: tuple[str, ...],
                  timeout: float, max_bytes: int) -> dict[str, str]:
    """download_mnist's work once its arguments are checked and `root` exists."""
    paths = {}
    for name, (algorithm, digest) in plan.items():
        dest = os.path.join(root, name)
        paths[name] = dest
        if _already_there(dest, algorithm, digest):
            continue
        failures = []
        for mirror in mirrors:
            url = mirror + urllib.parse.quote(name)
            try:
                _fetch(url, dest, algorithm, digest, timeout, max_bytes)
                break
            except (OSError, _MirrorFailed) as err:
                failures.append(f"{url}: {err}")
        else:
            raise DownloadError(f"could not download {name} into {os.path.abspath(root)!r}: "
                                + "; ".join(failures))
    return paths

"""A bounded loopback HTTP server for the download tests: serves files the test makes,
from memory, on 127.0.0.1 at an ephemeral port, and records the paths asked for."""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import struct
import threading
import time

import numpy as np

MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def idx_gz(array) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def small_mnist(n_train=6, n_test=4, seed=0):
    """{file name: gz bytes} for four small IDX files, and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    return {stem + ".gz": idx_gz(a) for stem, a in arrays.items()}, arrays


def sha256_table(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


@dataclasses.dataclass
class Redirect:
    """Served as a 302 to `location`."""
    location: str


@dataclasses.dataclass
class Drip:
    """Served one byte every `every` seconds (announcing its full length)."""
    data: bytes
    every: float

    def __len__(self):
        return len(self.data)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        entry = self.server.files.get(self.path)
        if entry is None:
            self.send_error(404)
            return
        body, announced = entry
        if isinstance(body, Redirect):
            self.send_response(302)
            self.send_header("Location", body.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if announced is None else announced))
        self.send_header("Connection", "close")
        self.end_headers()
        if isinstance(body, Drip):  # one byte every `every` seconds
            with contextlib.suppress(ConnectionError):  # the client may give up first
                for i in range(len(body.data)):
                    self.wfile.write(body.data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(body.every)
        else:
            self.wfile.write(body)  # fewer bytes than announced: a truncated transfer
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(files: dict[str, bytes | tuple[bytes, int]], prefix: str = "/mnist/"):
    """Serve {name: bytes} (or {name: (bytes, announced Content-Length)}) under prefix;
    yield (base URL, server) and shut the server down afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.timeout = 5
    server.requests = []
    server.files = {prefix + name: (v if isinstance(v, tuple) else (v, None))
                    for name, v in files.items()}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test server did not stop"

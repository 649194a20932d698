"""Benchmark: `vaetut.fit` against the usual DataLoader training loop, and the IWAE bound.

    python benchmarks/bench.py [--device cpu|cuda|all] [--quick] [--steps N] [--rounds R]
                               [--only digits|mnist|iwae] [--compile | --no-compile] [--out PATH]
    python benchmarks/bench.py --render benchmarks/results/cpu-2core.json [--readme README.md]

(`make bench` runs the first. The harness lives beside the package, not in it: it measures
`vaetut`, the book does not teach it. Reading and rendering results files is in
benchmarks/bench_report.py, which needs no torch.)

Every path trains the same model (vaetut.VAE, same seeded initial weights) on the same
data with the same loss, -vaetut.elbo(...).elbo.mean(), for the same samples, and the
paths take turns in each of R rounds, so that their ratios hold on a busy machine:

    baseline   the loop of the common tutorials (pytorch/examples' VAE): a DataLoader over
               a TensorDataset, shuffle=True, batch 128, loss.item() every step
    fit        vaetut.fit as it is by default (data on the device, a seeded permutation)
    fit+fast   fit(fused_adam=True, check_every=...)             (same batch, same steps)
    fit+fast B=1024, fit+compile B=1024, ...   larger batches and torch.compile (fewer steps)
    fit+graph, fit+graph B=1024   CUDA only: fit(cuda_graph=True, fused_adam=True), the whole
               training step captured in one CUDA graph (where vaetut.fit has that option)

Each path runs one pass over its data as warm-up (timed apart, not counted) and then the
timed pass(es). The matrix-multiply rate of the device is measured in every round too;
the model's FLOP rate (6 x parameters per sample, forward + backward) is reported as a
fraction of it, and each path's time per epoch as a multiple of the compute limit (the
epoch's 6 x parameters x images FLOPs at that matmul rate; "× compute limit"). Memory: on
the CPU the peak of the process's resident set size (psutil, sampled every 10 ms on a
thread) minus its size when the path started; on CUDA torch.cuda.max_memory_allocated
minus the memory allocated when the path started.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

import vaetut
from bench_report import check_consistency, load, render_markdown, update_readme
from vaetut.data import load_digits
from vaetut.run.device import pick_device
from vaetut.model import VAE
from vaetut import elbo, iwae_bound
from vaetut.run.train import fit

# the CPU's name comes from validation/machine.py, which the numerics battery records too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "validation"))
from machine import cpu_name  # noqa: E402

SCHEMA = 1
BASELINE_BATCH = 128
LARGE_BATCH = 1024
CPU_MEMORY_METHOD = ("peak resident set size (psutil.Process().memory_info().rss sampled every "
                     "10 ms on a thread) minus the RSS when the path started")
CUDA_MEMORY_METHOD = ("torch.cuda.max_memory_allocated() minus torch.cuda.memory_allocated() "
                      "when the path started (tensors only; not the CUDA context or cache)")


# ----------------------------------------------------------------------------- counting

def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable numbers in the model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_flops_per_sample(model: torch.nn.Module) -> int:
    """Training FLOPs per sample by the usual 6N rule: each weight costs a multiply and an
    add in the forward pass (2) and twice that in the backward pass (4).

    The exact multiply-add count of the VAE's linear layers is a little lower (the first
    layer needs no gradient with respect to its input, biases cost 1 not 2); the 6N
    figure is the conventional one and is what the benchmark's FLOP rates use.
    """
    return 6 * count_parameters(model)


def iwae_flops(model: torch.nn.Module, n_images: int, k: int) -> int:
    """Forward FLOPs of iwae_bound: the encoder once per image, the decoder k times
    (2 FLOPs per weight)."""
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    return 2 * n_images * (enc + k * dec)


# ----------------------------------------------------------------------------- machine

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "load_average_start": _load_average(),
    }


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the machine was (other processes)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def git_commit() -> str | None:
    """The commit of the vaetut being measured (short hash, "+dirty" for uncommitted
    changes), or None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(vaetut.__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                              capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int, min_seconds: float = 0.3) -> float:
    """float32 GFLOP/s of a large `a @ b` (n x n) on the device."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    a @ b  # warm-up
    sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * n**3 * reps / elapsed / 1e9


class PeakMemory:
    """Peak memory of what runs inside `with PeakMemory(device) as m:`, in MB (m.peak_mb)."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval, self.peak_mb = device, interval, float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            self._proc = psutil.Process()
            self._start = self._peak = self._proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (peak - self._start) / 2**20


# ----------------------------------------------------------------------------- data

def synthetic_mnist(n: int = 60_000, side: int = 28, n_prototypes: int = 10,
                    seed: int = 0) -> torch.Tensor:
    """An MNIST-sized stand-in (MNIST cannot be downloaded here): (n, side*side) binary
    float32 images, seeded Bernoulli draws of `n_prototypes` smooth random images (random
    7 x 7 fields, upsampled bilinearly and squashed to probabilities in (0.02, 0.98))."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n_prototypes, 1, 7, 7, generator=gen) * 2.5 - 1.0
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear",
                                             align_corners=False)
    probs = (0.02 + 0.96 * torch.sigmoid(smooth)).reshape(n_prototypes, side * side)
    which = torch.randint(n_prototypes, (n,), generator=gen)
    return torch.bernoulli(probs[which], generator=gen)


# ----------------------------------------------------------------------------- paths

def baseline_loop(model: torch.nn.Module, x: torch.Tensor, *, epochs: int, batch_size: int,
                  lr: float, device: torch.device, seed: int = 0,
                  on_epoch_end: Callable[[int], None] | None = None,
                  num_workers: int | None = None) -> list[float]:
    """The training loop of pytorch/examples' VAE, with vaetut's model and loss.

    A DataLoader over a TensorDataset (shuffle=True; on CUDA num_workers=1 and
    pin_memory=True, as there), each batch moved to the device, loss.item() every step.
    Returns the mean loss of each epoch.
    """
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    cuda = device.type == "cuda"
    if num_workers is None:
        num_workers = 1 if cuda else 0
    loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True,
                        num_workers=num_workers, pin_memory=cuda)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    means = []
    for epoch in range(1, epochs + 1):
        train_loss = 0.0
        for (data,) in loader:
            data = data.to(device)
            optimizer.zero_grad()
            loss = -elbo(model, data, validate=False).elbo.mean()
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        means.append(train_loss / len(loader))
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return means


def _fresh_model(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    return VAE(config["x_dim"], config["z_dim"], tuple(config["hidden"]))


def run_path(path: dict, x: torch.Tensor, config: dict, device: torch.device,
             timed_epochs: int, lr: float) -> dict:
    """One warm-up pass over x, then `timed_epochs` timed passes; seconds of each part."""
    model = _fresh_model(config)
    stamps: list[float] = []

    def stamp(*_: Any) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    epochs = 1 + timed_epochs
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        if path["kind"] == "baseline":
            baseline_loop(model, x, epochs=epochs, batch_size=path["batch_size"], lr=lr,
                          device=device, on_epoch_end=stamp,
                          num_workers=path.get("num_workers"))
        else:
            fit(model, x, epochs=epochs, batch_size=path["batch_size"], lr=lr, device=device,
                seed=0, progress=False, on_epoch_end=stamp, **path.get("options", {}))
    return {"warmup_s": stamps[0] - start, "timed_s": stamps[-1] - stamps[0],
            "peak_mb": mem.peak_mb}


def training_paths(device: torch.device, compile_: bool, check_every: int) -> list[dict]:
    fast = {"fused_adam": True, "check_every": check_every}
    if fit_has_cuda_graph():  # fit graphs its step on CUDA by default: these rows are eager
        fast["cuda_graph"] = False
    paths = [
        {"name": "baseline", "kind": "baseline", "batch_size": BASELINE_BATCH,
         "description": "DataLoader(TensorDataset), shuffle, loss.item() per step"},
        {"name": "fit", "kind": "fit", "batch_size": BASELINE_BATCH, "options": {},
         "description": "vaetut.fit, defaults (on CUDA: cuda_graph='auto', the graph path)"},
        {"name": "fit+fast", "kind": "fit", "batch_size": BASELINE_BATCH, "options": fast,
         "description": f"fit(fused_adam=True, check_every={check_every}), the eager loop"},
        {"name": f"fit+fast B={LARGE_BATCH}", "kind": "fit", "batch_size": LARGE_BATCH,
         "options": fast, "description": f"as fit+fast, batch {LARGE_BATCH}"},
    ]
    if compile_:
        paths.append({"name": f"fit+fast+compile B={LARGE_BATCH}", "kind": "fit",
                      "batch_size": LARGE_BATCH, "options": {**fast, "compile": True},
                      "description": f"as fit+fast, batch {LARGE_BATCH}, compile=True"})
        if device.type == "cuda":
            paths.append({"name": "fit+fast+cudagraphs", "kind": "fit",
                          "batch_size": BASELINE_BATCH,
                          "options": {**fast, "compile": "reduce-overhead"},
                          "description": "as fit+fast (batch 128, the same steps), "
                                         "compile='reduce-overhead' (CUDA graphs)"})
            paths.append({"name": f"fit+fast+cudagraphs B={LARGE_BATCH}", "kind": "fit",
                          "batch_size": LARGE_BATCH,
                          "options": {**fast, "compile": "reduce-overhead"},
                          "description": f"as fit+fast, batch {LARGE_BATCH}, "
                                         "compile='reduce-overhead' (CUDA graphs)"})
    if device.type == "cuda" and fit_has_cuda_graph():
        graph = {"fused_adam": True, "cuda_graph": True}
        for batch in (BASELINE_BATCH, LARGE_BATCH):
            paths.append({"name": "fit+graph" + ("" if batch == BASELINE_BATCH
                                                 else f" B={batch}"),
                          "kind": "fit", "batch_size": batch, "options": graph,
                          "description": f"fit(cuda_graph=True, fused_adam=True), batch "
                                         f"{batch}: the whole step in one CUDA graph"})
    return paths


def fit_has_cuda_graph() -> bool:
    """Whether this vaetut.fit has the `cuda_graph` option (whole-step CUDA graphs)."""
    return "cuda_graph" in inspect.signature(vaetut.fit).parameters


def bench_training(name: str, x: torch.Tensor, config: dict, device: torch.device, *,
                   steps: int, rounds: int, compile_: bool, matmul_n: int, lr: float,
                   log: Callable[[str], None]) -> tuple[list[dict], list[float]]:
    """Time every path on the first min(len(x), steps * 128) rows of x (MNIST) or on
    enough whole epochs of x to make `steps` steps of batch 128 (digits)."""
    n_full = len(x)
    n_used = min(n_full, steps * BASELINE_BATCH)
    x_used = x[:n_used]
    timed_epochs = max(1, math.ceil(steps / math.ceil(n_used / BASELINE_BATCH)))
    model = _fresh_model(config)
    params, flops_sample = count_parameters(model), model_flops_per_sample(model)
    # compiled paths for the MNIST-sized model only: on the digits compiling costs far more
    # than it could save. Each (mode, batch shape) compiles once per process, in the warm-up
    # of the first round; room for them all in Dynamo's cache (8 entries by default):
    paths = training_paths(device, compile_ and name == "mnist",
                           check_every=max(2, min(100, steps)))
    if compile_:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    times: dict[str, list[dict]] = {p["name"]: [] for p in paths}
    errors: dict[str, str] = {}
    matmul: list[float] = []
    for r in range(rounds):
        matmul.append(matmul_gflops(device, matmul_n))
        for path in paths:
            if path["name"] in errors:
                continue
            try:
                t = run_path(path, x_used, config, device, timed_epochs, lr)
            except Exception as err:  # noqa: BLE001  (a failing path is reported, not fatal)
                if path["kind"] == "baseline" and path.get("num_workers") is None \
                        and device.type == "cuda":
                    path["num_workers"] = 0  # fall back to loading in the main process
                    path["description"] += " (num_workers=0: a worker failed)"
                    t = run_path(path, x_used, config, device, timed_epochs, lr)
                else:
                    errors[path["name"]] = f"{type(err).__name__}: {err}"[:300]
                    log(f"[{device}] {name} {path['name']}: FAILED {errors[path['name']]}")
                    continue
            times[path["name"]].append(t)
            log(f"[{device}] {name} round {r + 1}/{rounds} {path['name']:<34} "
                f"warm-up {t['warmup_s']:.2f} s, timed {t['timed_s']:.3f} s, "
                f"peak {t['peak_mb']:.0f} MB")
    matmul_rate = statistics.median(matmul)
    flops_epoch = flops_sample * n_full
    limit_s = flops_epoch / (matmul_rate * 1e9)
    base = times["baseline"]
    rows = []
    for path in paths:
        ts = times[path["name"]]
        batch = path["batch_size"]
        row = {"data": name, "path": path["name"], "description": path["description"],
               "options": path.get("options", {}), "batch_size": batch, "n_train": n_full,
               "n_timed_per_epoch": n_used, "timed_epochs": timed_epochs,
               "timed_steps": timed_epochs * math.ceil(n_used / batch),
               "steps_per_epoch": math.ceil(n_full / batch), "params": params,
               "flops_per_sample": flops_sample, "rounds": len(ts),
               "error": errors.get(path["name"])}
        if ts:
            per_sample = statistics.median(t["timed_s"] for t in ts) / (timed_epochs * n_used)
            ratios = [b["timed_s"] / t["timed_s"] for b, t in zip(base, ts)]
            gflops = flops_sample / per_sample / 1e9
            row.update({
                "seconds_per_epoch": per_sample * n_full,
                "samples_per_second": 1 / per_sample,
                "speedup_vs_baseline": statistics.median(ratios) if ratios else None,
                "model_gflops": gflops,
                "fraction_of_matmul": gflops / matmul_rate,
                "times_from_limit": per_sample * n_full / limit_s,
                "warmup_seconds": ts[0]["warmup_s"],  # first round: compilation included
                "warmup_seconds_all": [t["warmup_s"] for t in ts],
                "peak_memory_mb": max(t["peak_mb"] for t in ts),
                "timed_seconds": [t["timed_s"] for t in ts],
            })
        rows.append(row)
    return rows, matmul


def bench_iwae(config: dict, x: torch.Tensor, device: torch.device, ks: list[int],
               matmul_rate: float, log: Callable[[str], None]) -> list[dict]:
    """Time vaetut.iwae_bound (no gradients, default chunking) for each k."""
    model = _fresh_model(config).to(device).eval()
    x = x.to(device)
    rows = []
    with torch.no_grad():
        iwae_bound(model, x[:8], 4)  # warm-up
        for k in ks:
            row = {"k": k, "n_images": len(x), "params": count_parameters(model),
                   "chunk_size": max(1, min(k, 2**24 // max(1, len(x) * model.x_dim))),
                   "error": None}
            try:
                gen = torch.Generator(device=device).manual_seed(0)
                with PeakMemory(device) as mem:
                    sync(device)
                    start = time.perf_counter()
                    bound = iwae_bound(model, x, k, generator=gen)
                    sync(device)
                    seconds = time.perf_counter() - start
                gflops = iwae_flops(model, len(x), k) / seconds / 1e9
                row.update({"seconds": seconds, "peak_memory_mb": mem.peak_mb,
                            "gflops": gflops, "fraction_of_matmul": gflops / matmul_rate,
                            "mean_bound": bound.mean().item(),
                            "finite": bool(torch.isfinite(bound).all())})
                log(f"[{device}] iwae k={k}: {seconds:.2f} s, peak {mem.peak_mb:.0f} MB")
            except Exception as err:  # noqa: BLE001
                row["error"] = f"{type(err).__name__}: {err}"[:300]
                log(f"[{device}] iwae k={k}: FAILED {row['error']}")
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- breakdown

def gemm_flops_per_sample(model: torch.nn.Module) -> int:
    """Exact FLOPs of the matrix multiplies of one training step, per sample: for each
    linear layer (in x out) 2·in·out forward, 2·in·out for the weight gradient and
    2·in·out for the input gradient, except for the layers that read x (no input
    gradient needed). Elementwise work and biases are not counted."""
    first = ([model.encoder.body[0]] if model.config["hidden"]
             else [model.encoder.mean, model.encoder.log_var])
    total = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            total += (4 if any(mod is f for f in first) else 6) * mod.in_features * mod.out_features
    return total


def step_breakdown(config: dict, x: torch.Tensor, device: torch.device, batch_size: int,
                   steps: int, fused: bool, matmul_rate: float) -> dict:
    """Where the time of a training step goes on the CPU: the step of fit (ELBO with a
    generator, backward, Adam) timed plainly, then once more under torch.profiler to split
    it into matrix multiplies (aten::mm/addmm), Adam's step, and the rest."""
    from torch.profiler import ProfilerActivity, profile

    model = _fresh_model(config).to(device)
    optimizer = (torch.optim.Adam(model.parameters(), lr=1e-3, fused=True) if fused
                 else torch.optim.Adam(model.parameters(), lr=1e-3))
    gen = torch.Generator(device=device).manual_seed(0)
    x = x.to(device)

    def run(k: int) -> None:
        for _ in range(k):
            idx = torch.randint(len(x), (batch_size,), generator=gen, device=device)
            loss = -elbo(model, x[idx], 1, gen, validate=False).elbo.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    run(3)
    start = time.perf_counter()
    run(steps)
    wall = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
    adam = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
    gemm_s = wall * gemm / total
    return {"batch_size": batch_size, "fused_adam": fused, "steps": steps,
            "ms_per_step": wall * 1e3, "gemm_share": gemm / total, "adam_share": adam / total,
            "other_share": 1 - (gemm + adam) / total,
            "gemm_gflops": gemm_flops_per_sample(model) * batch_size / gemm_s / 1e9,
            "gemm_fraction_of_matmul": (gemm_flops_per_sample(model) * batch_size / gemm_s
                                        / 1e9 / matmul_rate)}


# ----------------------------------------------------------------------------- op profile

PROFILE_CATEGORIES = ("matrix products", "Adam step", "finiteness checks", "batch gather",
                      "rest")
_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm"}
_CHECK_OPS = {"aten::isfinite", "aten::abs", "aten::ne", "aten::eq", "aten::item",
              "aten::_local_scalar_dense", "aten::is_nonzero"}
_GATHER_OPS = {"aten::index", "aten::index_select"}


def _profile_category(event) -> str:
    parent = event
    while parent is not None:  # everything under Optimizer.step is Adam's, whatever the op
        if parent.name.startswith("Optimizer.step"):
            return "Adam step"
        parent = parent.cpu_parent
    if event.name in _MATMUL_OPS:
        return "matrix products"
    if event.name in _CHECK_OPS:
        return "finiteness checks"
    if event.name in _GATHER_OPS:
        return "batch gather"
    return "rest"


def op_profile(config: dict, x: torch.Tensor, device: torch.device, name: str,
               options: dict) -> dict:
    """One epoch of vaetut.fit itself (after a warm-up epoch) under torch.profiler, its
    self CPU time split into PROFILE_CATEGORIES: where an epoch of that path goes."""
    from torch.profiler import ProfilerActivity, profile

    model = _fresh_model(config)
    fit(model, x, epochs=1, batch_size=BASELINE_BATCH, lr=1e-3, device=device, seed=0,
        progress=False, **options)  # warm-up: allocator, kernels
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fit(model, x, epochs=1, batch_size=BASELINE_BATCH, lr=1e-3, device=device, seed=1,
            progress=False, **options)
        wall = time.perf_counter() - start
    ms = dict.fromkeys(PROFILE_CATEGORIES, 0.0)
    for event in prof.events():
        ms[_profile_category(event)] += event.self_cpu_time_total / 1e3
    total = sum(ms.values())
    return {"path": name, "options": options, "n_images": len(x), "wall_s": wall,
            "self_cpu_ms": ms, "total_self_cpu_ms": total,
            "shares": {k: v / total for k, v in ms.items()}}


# ----------------------------------------------------------------------------- main

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all",
                   help="cpu, cuda, cuda:N or all (the CPU, and CUDA when present)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests; seconds)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps of batch 128 timed per path and round (default: 300 "
                        "on the CPU, a whole MNIST-sized epoch (469) on CUDA)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of all paths (default 5 on the CPU, 3 on CUDA)")
    p.add_argument("--only", action="append", choices=("digits", "mnist", "iwae"),
                   help="run only this part (repeatable)")
    p.add_argument("--ks", type=int, nargs="+", default=None,
                   help="k of the IWAE bound (default 1000 5000)")
    p.add_argument("--compile", dest="compile_", action="store_true", default=None,
                   help="include the torch.compile paths (default: on CUDA only)")
    p.add_argument("--no-compile", dest="compile_", action="store_false")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--note", default=None, help="a remark stored in the JSON and shown")
    p.add_argument("--out", default=None,
                   help="JSON file to write (default benchmarks/results/<machine>.json; "
                        "with --quick, vaetut-bench-quick.json in the temporary folder)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="print the markdown table of a results file (from any machine) and "
                        "exit; fails if its derived columns do not follow from its timings")
    p.add_argument("--readme", metavar="MD", default=None,
                   help="with --render: write the table into this markdown file instead, "
                        "between its bench:begin/bench:end markers for that JSON")
    return p


def default_out(devices: list[torch.device], quick: bool = False) -> str:
    """benchmarks/results/<machine>.json; a --quick run (not a measurement) goes to the
    temporary folder instead, so that it never replaces a committed results file."""
    if quick:
        return os.path.join(tempfile.gettempdir(), "vaetut-bench-quick.json")
    tag = f"cpu-{os.cpu_count()}core"
    for d in devices:
        if d.type == "cuda":
            words = torch.cuda.get_device_name(d).split()  # e.g. NVIDIA H100 80GB HBM3
            model = next((w for w in words[1:] if any(c.isdigit() for c in w)), words[-1])
            tag += "-" + "".join(c for c in model.lower() if c.isalnum())
    return os.path.join("benchmarks", "results", tag + ".json")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    if args.render:
        results = load(args.render)
        problems = check_consistency(results)
        for problem in problems:  # columns that do not follow from the file's raw timings
            print(f"{args.render}: {problem}", file=sys.stderr)
        if problems:
            return 1
        if args.readme:
            update_readme(args.readme, args.render)
        else:
            sys.stdout.write(render_markdown(results))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                           else [])
    else:
        devices = [pick_device(args.device)]
    parts = args.only or ["digits", "mnist", "iwae"]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    digits = load_digits(binarize="fixed")
    if args.quick:
        mnist = synthetic_mnist(n=1024)
        iwae_x, ks = mnist[:20], args.ks or [10, 50]
    else:
        mnist = synthetic_mnist()
        # 1,000 "test" images: new draws from the same seeded generator family
        iwae_x, ks = synthetic_mnist(n=1000, seed=1), args.ks or [1000, 5000]
    datasets = {"digits": (digits.train, {"x_dim": 64, "z_dim": 8, "hidden": [128]}),
                "mnist": (mnist, {"x_dim": 784, "z_dim": 20, "hidden": [400]})}
    results: dict[str, Any] = {
        "schema": SCHEMA, "command": shlex.join(["python", "benchmarks/bench.py", *argv]),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(), "note": args.note, "quick": args.quick, "devices": {}}
    for device in devices:
        cuda = device.type == "cuda"
        steps = args.steps or (4 if args.quick else (469 if cuda else 300))
        rounds = args.rounds or (1 if args.quick else (3 if cuda else 5))
        compile_ = cuda if args.compile_ is None else args.compile_
        matmul_n = 256 if args.quick else (4096 if cuda else 2048)
        d: dict[str, Any] = {"name": device_name(device), "matmul_size": matmul_n,
                             "memory_method": CUDA_MEMORY_METHOD if cuda else CPU_MEMORY_METHOD,
                             "steps": steps, "rounds": rounds, "training": [], "data": {},
                             "matmul_gflops_all": []}
        for name in ("digits", "mnist"):
            if name not in parts:
                continue
            x, config = datasets[name]
            rows, matmul = bench_training(
                name, x, config, device, steps=steps,
                rounds=rounds, compile_=compile_, matmul_n=matmul_n, lr=1e-3, log=log)
            d["training"] += rows
            d["matmul_gflops_all"] += matmul
            rate = statistics.median(matmul)
            flops_epoch = rows[0]["flops_per_sample"] * len(x)
            d["data"][name] = {
                "n_train": len(x), "x_dim": config["x_dim"], "params": rows[0]["params"],
                "model": "-".join(map(str, [config["x_dim"], *config["hidden"],
                                            config["z_dim"], *config["hidden"][::-1],
                                            config["x_dim"]])),
                "flops_per_epoch": flops_epoch, "matmul_gflops": rate,
                "epoch_at_matmul_rate_s": flops_epoch / (rate * 1e9)}
        if "mnist" in parts and not cuda:
            rate = statistics.median(d["matmul_gflops_all"])
            d["breakdown"] = [
                step_breakdown(datasets["mnist"][1], mnist, device, b, k, fused, rate)
                for b, k in ((BASELINE_BATCH, 3 if args.quick else 30),
                             (LARGE_BATCH, 2 if args.quick else 6))
                for fused in (False, True)]
            log(f"[{device}] step breakdown: " + ", ".join(
                f"B={r['batch_size']}{' fused' if r['fused_adam'] else ''}: "
                f"GEMM {100 * r['gemm_share']:.0f}%" for r in d["breakdown"]))
            profiled = mnist[:512 if args.quick else 8000]
            d["profile"] = [op_profile(datasets["mnist"][1], profiled, device, name, options)
                            for name, options in (("fit (default)", {}),
                                                  ("fit(fused_adam=False)",
                                                   {"fused_adam": False}))]
            log(f"[{device}] profile: " + ", ".join(
                f"{r['path']}: matrix products {100 * r['shares']['matrix products']:.0f}%"
                for r in d["profile"]))
        if "iwae" in parts:
            if not d["matmul_gflops_all"]:
                d["matmul_gflops_all"].append(matmul_gflops(device, matmul_n))
            d["iwae"] = bench_iwae(datasets["mnist"][1], iwae_x, device, ks,
                                   statistics.median(d["matmul_gflops_all"]), log)
        d["matmul_gflops"] = statistics.median(d["matmul_gflops_all"])
        results["devices"][str(device)] = d
    results["machine"]["load_average_end"] = _load_average()
    out = args.out or default_out(devices, args.quick)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    sys.stdout.write(render_markdown(results))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The float32 CPU kernels the book's chapters use, each computed several ways on fixed
inputs and hashed bit for bit: this machine's numerical fingerprint.

    python validation/numerics_battery.py --out FILE     # the full battery (hashes + samples)
    python validation/numerics_battery.py --compare A B  # which kernels differ, by how many ulp
    python validation/numerics_battery.py --check validation/numerics/fingerprint.json
                                                         # does this machine match?

Strict nbval is a promise only where the machine's kernels are the ones that wrote the stored
outputs: `make notebooks` writes validation/numerics/fingerprint.json (the hashes) and
validation/numerics/battery-reference.json.gz (hashes and sampled values) on the machine that
re-made the outputs, and `make test` runs `--check` first (validation/run_tests.py) to choose
strict or spread mode. Inputs are made deterministically (float64 linspace/arange, then cast),
so every machine feeds every kernel the same bits. Besides single kernels, two short training
runs of chapter 5 (the ELBO with 10 samples and the IWAE bound, k = 10) are hashed: the IWAE
run is the one whose weights first parted between an AMD EPYC and an Intel Xeon (issue 19), so
it catches a kernel that differs on a small fraction of inputs even where no grid below hits.
Adapted from shared/tools/numerics_battery.py (same entries, smaller grids, plus the runs).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import platform
import sys

import torch

from machine import cpu_name

GRID = 1 << 20


def _hash(t: torch.Tensor) -> str:
    t = t.detach().contiguous().reshape(-1)
    return hashlib.blake2b(t.view(torch.uint8).numpy().tobytes(), digest_size=8).hexdigest()


def _sample(t: torch.Tensor) -> list[float]:
    t = t.detach().reshape(-1).double()
    idx = torch.cat([torch.arange(min(256, t.numel())), torch.arange(0, t.numel(), 997)])
    return [float(v) for v in t[idx]]


def grid(lo: float, hi: float, n: int = GRID, log: bool = False) -> torch.Tensor:
    x = torch.linspace(math.log(lo), math.log(hi), n, dtype=torch.float64).exp() if log \
        else torch.linspace(lo, hi, n, dtype=torch.float64)
    # a deterministic, irregular perturbation so values do not sit on a regular lattice
    x = x * (1 + 1e-3 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.7071))
    return x.float()


def matrices(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.sin(torch.arange(m * k, dtype=torch.float64) * (0.37 + seed)).reshape(m, k)
    b = torch.cos(torch.arange(k * n, dtype=torch.float64) * (0.53 + seed)).reshape(k, n)
    return a.float(), b.float()


def kernels() -> dict[str, torch.Tensor]:
    """Single kernels: element-wise functions over the ranges training feeds them,
    reductions, matrix products at the chapters' shapes, random draws, LAPACK, Adam."""
    F = torch.nn.functional
    out = {}
    unary = {
        "exp": (torch.exp, grid(-104.0, 88.0)),
        "exp_negative": (torch.exp, grid(-60.0, 0.0)),  # logsumexp's and softmax's range
        "log": (torch.log, grid(1e-44, 3e38, log=True)),
        "log1p": (torch.log1p, grid(-0.999, 1e6)),
        "expm1": (torch.expm1, grid(-20.0, 20.0)),
        "sqrt": (torch.sqrt, grid(1e-44, 3e38, log=True)),
        "rsqrt": (torch.rsqrt, grid(1e-30, 3e30, log=True)),
        "tanh": (torch.tanh, grid(-10.0, 10.0)),
        "sigmoid": (torch.sigmoid, grid(-40.0, 40.0)),
        "softplus": (F.softplus, grid(-40.0, 40.0)),
        "lgamma": (torch.lgamma, grid(1e-3, 1e3, log=True)),
        "erf": (torch.erf, grid(-6.0, 6.0)),
        "log_sigmoid": (F.logsigmoid, grid(-40.0, 40.0)),
    }
    for name, (f, x) in unary.items():
        out[f"{name}/contiguous"] = f(x)
        out[f"{name}/strided"] = f(torch.stack([x, x], 1)[:, 0])  # same values, stride 2
        out[f"{name}/small"] = torch.cat([f(c) for c in x[:4096].split(16)])  # short calls
    x = grid(-30.0, 5.0).reshape(-1, 64)
    out["logsumexp/dim0"] = torch.logsumexp(x.reshape(64, -1), 0)
    out["logsumexp/dim1"] = torch.logsumexp(x, 1)
    out["softmax/dim0"] = torch.softmax(x.reshape(64, -1), 0)
    logits, target = grid(-20.0, 20.0), (grid(0.0, 1.0) > 0.5).float()
    out["bce_with_logits"] = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    out["sum/float32"] = x.sum(1)
    for m, k, n in [(64, 64, 128), (64, 128, 16), (640, 16, 128), (640, 128, 64),
                    (64, 640, 128), (128, 640, 16), (1437, 64, 64), (128, 784, 400),
                    (128, 400, 784), (400, 128, 784)]:
        a, b = matrices(m, k, n, 0)
        out[f"mm/{m}x{k}x{n}"] = a @ b
        out[f"mm_t/{m}x{k}x{n}"] = (b.t().contiguous() @ a.t().contiguous()).t()
        out[f"addmm/{m}x{k}x{n}"] = torch.addmm(b[0, :n], a, b)
    a, b = matrices(10 * 64, 16, 128, 1)
    out["bmm/10x64x16x128"] = torch.bmm(a.reshape(10, 64, 16), b.expand(10, 16, 128))
    a, b = matrices(64, 64, 64, 2)
    out["mm/float64"] = (a.double() @ b.double()).float()
    g = torch.Generator().manual_seed(0)
    out["randn"] = torch.randn(262144, generator=g)
    out["rand"] = torch.rand(262144, generator=g)
    out["randperm"] = torch.randperm(60000, generator=g).float()
    a64, _ = matrices(64, 64, 1, 2)
    spd = a64.double() @ a64.double().t() + 64 * torch.eye(64, dtype=torch.float64)
    out["cholesky64"] = torch.linalg.cholesky(spd)
    out["slogdet64"] = torch.linalg.slogdet(spd).logabsdet.reshape(1)
    out["eigh64"] = torch.linalg.eigh(spd).eigenvalues
    out["inv64"] = torch.linalg.inv(spd)
    for fused in (False, True):  # three Adam steps on fixed tensors, both kernels fit uses
        p = torch.nn.Parameter(grid(-1.0, 1.0, 65536))
        opt = torch.optim.Adam([p], lr=3e-3, foreach=False, fused=fused or None)
        for i in range(3):
            p.grad = torch.sin(torch.arange(65536, dtype=torch.float64) * (i + 1.3)).float()
            opt.step()
        out[f"adam3/{'fused' if fused else 'plain'}"] = p.detach()
    return out


def training_runs(epochs: int = 8) -> dict[str, torch.Tensor]:
    """The weights after short runs of chapter 5's two trainings (seed 0, fit's default step)."""
    import vaetut
    from vaetut.objective import iwae_objective

    data = vaetut.data.load_digits(binarize="fixed")
    out = {}
    for name, objective in (("elbo_k10", vaetut.elbo), ("iwae_k10", iwae_objective)):
        torch.manual_seed(0)
        model = vaetut.VAE(x_dim=64, z_dim=16, hidden=(128,))
        vaetut.fit(model, data.train, epochs=epochs, batch_size=64, lr=3e-3, device="cpu",
                   seed=0, n_samples=10, objective=objective, progress=False)
        out[f"train/{name}_{epochs}epochs"] = torch.cat([p.detach().reshape(-1)
                                                         for p in model.parameters()])
    return out


def measure() -> dict:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    results = {**kernels(), **training_runs()}
    env_keys = ("MKL", "OMP_", "GOMP_", "ATEN", "ONEDNN", "OPENBLAS", "NPY_")
    meta = {"cpu": cpu_name(), "machine": platform.machine(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(env_keys)}}
    return {"meta": meta, "hash": {k: _hash(v) for k, v in results.items()},
            "sample": {k: _sample(v) for k, v in results.items()}}


def _read(path: str) -> dict:
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        return json.load(f)


def _write(data: dict, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    text = json.dumps(data, indent=None if path.endswith(".gz") else 1, sort_keys=True)
    if path.endswith(".gz"):  # mtime 0: the same battery gives the same bytes, no git diff
        with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as f:
            f.write(text.encode())
    else:
        with open(tmp, "w") as f:
            f.write(text)
    os.replace(tmp, path)


def differing(mine: dict, reference: dict) -> list[str]:
    """The entries whose hashes differ (or that one side lacks)."""
    keys = sorted(set(mine["hash"]) | set(reference["hash"]))
    return [k for k in keys if mine["hash"].get(k) != reference["hash"].get(k)]


def check_line(mine: dict, reference: dict, name: str, shown: int = 8) -> tuple[bool, str]:
    """(whether `mine` matches `reference` hash for hash, the one line `--check` prints: the
    count of kernels that differ and the first `shown` of their names, sorted)."""
    bad = differing(mine, reference)
    if not bad:
        return True, f"all {len(mine['hash'])} kernels match {name}"
    listed = ", ".join(bad[:shown]) + (f" and {len(bad) - shown} more" if len(bad) > shown else "")
    return False, f"{len(bad)} of {len(mine['hash'])} kernels differ from {name}: {listed}"


def ulp_report(a: dict, b: dict, key: str) -> str:
    sa, sb = a.get("sample", {}).get(key), b.get("sample", {}).get(key)
    if sa is None or sb is None:
        return ""
    worst = max((abs(x - y) / math.ulp(float(torch.tensor(abs(x)).float())) / 2**29
                 for x, y in zip(sa, sb) if x != y and math.isfinite(x) and x != 0), default=0.0)
    return f" ({sum(x != y for x, y in zip(sa, sb))} of {len(sa)} sampled values differ, " \
           f"up to ~{worst:.0f} float32 ulp)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the full battery (hashes and samples) here")
    ap.add_argument("--fingerprint", help="also write the hashes alone here")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--check", metavar="FINGERPRINT",
                    help="exit 0 if this machine's hashes equal FINGERPRINT's, else 1, "
                         "naming the kernels that differ on one line")
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (_read(p) for p in args.compare)
        print("A:", a["meta"]["cpu"], "| B:", b["meta"]["cpu"])
        bad = differing(a, b)
        for k in bad:
            print(f"differs: {k}{ulp_report(a, b, k)}")
        print(f"{len(a['hash']) - len(bad)} of {len(a['hash'])} entries agree bit for bit")
        return 1 if bad else 0
    mine = measure()
    if args.out:
        _write(mine, args.out)
    if args.fingerprint:
        _write({"meta": mine["meta"], "hash": mine["hash"]}, args.fingerprint)
    if args.check:
        matches, line = check_line(mine, _read(args.check), args.check)
        print(line)
        return 0 if matches else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

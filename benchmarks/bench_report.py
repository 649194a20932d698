"""Read, check and render the results files that `benchmarks/bench.py` writes.

No torch here: the book's benchmark appendix and benchmarks/README.md use this module to show
committed measurements without running (or importing) the benchmark itself.

    render_markdown(results)       the tables (what `bench.py --render FILE` prints)
    update_readme(readme, path)    put them into a markdown file between its markers
    check_consistency(results)     recompute every derived column from the raw timings
"""
from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

COMPUTE_LIMIT_LEGEND = (
    "× compute limit: seconds per epoch over the time the epoch's 6 x parameters x images "
    "FLOPs would take at the matmul rate measured in the same rounds (1.0 = at the limit).")


def load(path: str | os.PathLike) -> dict:
    """A results file as a dict."""
    with open(path) as f:
        return json.load(f)


def _fmt(v: Any, spec: str, missing: str = "–") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return missing
    return format(v, spec)


def _percent(fraction: float | None) -> str:
    """A fraction as a percentage: whole numbers, or one significant digit below 1%."""
    if fraction is None or not math.isfinite(fraction):
        return "–"
    v = 100 * fraction
    return format(v, ".1g") if 0 < v < 1 else format(v, ".0f")


def _times(v: float | None) -> str:
    """A ratio such as "× compute limit": one decimal below 10, whole numbers above."""
    if v is None or not math.isfinite(v):
        return "–"
    return format(v, ".1f") if v < 10 else format(v, ",.0f")


def _seconds(v: float) -> str:
    return f"{v:.3g} s" if v >= 1 else f"{v * 1e3:.3g} ms"


def render_markdown(results: dict) -> str:
    """The results JSON as markdown tables (what benchmarks/README.md shows)."""
    m = results["machine"]
    commit = results.get("commit")
    out = [f"Measured {results['date']}"
           + (f" at commit {commit}" if commit else "")
           + f" with `{results['command']}`; torch {m['torch']}, "
           f"{m['torch_threads']} thread{'' if m['torch_threads'] == 1 else 's'}, "
           f"CPU {m['cpu']} ({m['cpu_count']} cores)"
           + (f", GPU {m['cuda']}" if m.get("cuda") else "") + "."
           + (f" Load average (1 min) {m['load_average_start'][0]:.1f} at the start and "
              f"{m['load_average_end'][0]:.1f} at the end." if m.get("load_average_start")
              and m.get("load_average_end") else "")]
    if results.get("quick"):
        out.append("\n**Quick run** (`--quick`: tiny sizes, for tests; not a measurement to "
                   "quote).")
    if results.get("note"):
        out.append(f"\n**Note:** {results['note']}")
    for dev, d in results["devices"].items():
        out.append(f"\n### {dev}: {d['name']}\n")
        out.append(f"float32 matmul ({d['matmul_size']}x{d['matmul_size']}): "
                   f"**{d['matmul_gflops']:.0f} GFLOP/s** (median of "
                   f"{len(d['matmul_gflops_all'])} measurements, one per round). "
                   f"Peak memory: {d['memory_method']}.\n")
        if d.get("training"):
            out.append("| data | path | batch | steps timed | s / epoch | samples / s "
                       "| × baseline | model GFLOP/s | % of matmul | × compute limit "
                       "| warm-up s | peak MB |")
            out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
            for r in d["training"]:
                if r.get("error"):
                    out.append(f"| {r['data']} | {r['path']} | {r['batch_size']} | "
                               f"failed: {r['error']} |" + " |" * 8)
                    continue
                out.append(
                    f"| {r['data']} | {r['path']} | {r['batch_size']} | {r['timed_steps']} "
                    f"| {_fmt(r['seconds_per_epoch'], '.3g')} "
                    f"| {_fmt(r['samples_per_second'], ',.0f')} "
                    f"| {_fmt(r['speedup_vs_baseline'], '.2f')} "
                    f"| {_fmt(r['model_gflops'], '.1f')} "
                    f"| {_percent(r['fraction_of_matmul'])} "
                    f"| {_times(r['times_from_limit'])} "
                    f"| {_fmt(r['warmup_seconds'], '.2f')} "
                    f"| {_fmt(r['peak_memory_mb'], '.0f')} |")
            out.append(f"\n{COMPUTE_LIMIT_LEGEND}")
            for data_name, info in d.get("data", {}).items():
                out.append(f"\n{data_name}: {info['n_train']:,} training images of "
                           f"{info['x_dim']} pixels, model {info['model']} "
                           f"({info['params']:,} parameters, "
                           f"{info['flops_per_epoch'] / 1e12:.3g} TFLOP an epoch by 6N). "
                           f"The matmul rate during its rounds was "
                           f"{info['matmul_gflops']:.0f} GFLOP/s (what its % and × columns "
                           f"use): at that rate an epoch would take "
                           f"{_seconds(info['epoch_at_matmul_rate_s'])}.")
        if d.get("breakdown"):
            out.append("\nWhere a training step's time goes (mnist model, torch.profiler; "
                       "GEMM = aten::mm/addmm, its rate from the exact matmul FLOPs):\n")
            out.append("| batch | Adam | ms / step | GEMM share | GEMM GFLOP/s | GEMM % of matmul "
                       "| Adam step share | rest (elementwise, autograd, Python) |")
            out.append("|--:|---|--:|--:|--:|--:|--:|--:|")
            for r in d["breakdown"]:
                out.append(f"| {r['batch_size']} | {'fused' if r['fused_adam'] else 'for-loop'} "
                           f"| {r['ms_per_step']:.3g} | {100 * r['gemm_share']:.0f}% "
                           f"| {r['gemm_gflops']:.1f} | {100 * r['gemm_fraction_of_matmul']:.0f} "
                           f"| {100 * r['adam_share']:.0f}% | {100 * r['other_share']:.0f}% |")
        if d.get("profile"):
            cats = list(d["profile"][0]["self_cpu_ms"])
            n = d["profile"][0]["n_images"]
            out.append(f"\nWhere an epoch of fit goes ({n:,} mnist-sized images, batch 128, "
                       "torch.profiler self CPU time; everything under Optimizer.step counts "
                       "as Adam):\n")
            out.append("| path | wall s | " + " | ".join(cats) + " |")
            out.append("|---|--:|" + "--:|" * len(cats))
            for r in d["profile"]:
                out.append(f"| {r['path']} | {r['wall_s']:.3g} | " + " | ".join(
                    f"{r['self_cpu_ms'][c]:.0f} ms ({100 * r['shares'][c]:.0f}%)"
                    for c in cats) + " |")
        if d.get("iwae"):
            out.append("\n| IWAE bound | images | chunk | seconds | GFLOP/s | % of matmul "
                       "| peak MB |")
            out.append("|---|--:|--:|--:|--:|--:|--:|")
            for r in d["iwae"]:
                if r.get("error"):
                    out.append(f"| k = {r['k']:,} | {r['n_images']:,} | {r['chunk_size']} | "
                               f"failed: {r['error']} | | | |")
                    continue
                out.append(f"| k = {r['k']:,} | {r['n_images']:,} | {r['chunk_size']} "
                           f"| {_fmt(r['seconds'], '.3g')} | {_fmt(r['gflops'], '.1f')} "
                           f"| {_fmt(100 * r['fraction_of_matmul'], '.0f')} "
                           f"| {_fmt(r['peak_memory_mb'], '.0f')} |")
    return "\n".join(out) + "\n"


def update_readme(readme: str | os.PathLike, results_path: str | os.PathLike) -> None:
    """Put the rendering of results_path into readme between the lines
    `<!-- bench:begin NAME -->` and `<!-- bench:end NAME -->` (NAME: the JSON's file name),
    appending them at the end if they are not there yet."""
    name = os.path.basename(results_path)
    begin, end = f"<!-- bench:begin {name} -->", f"<!-- bench:end {name} -->"
    table = render_markdown(load(results_path))
    text = open(readme).read() if os.path.exists(readme) else ""
    block = f"{begin}\n<!-- generated by: python benchmarks/bench.py --render {results_path} " \
            f"--readme {readme} -->\n\n{table}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(readme, "w") as f:
        f.write(text)


def check_consistency(results: dict, rel: float = 1e-6) -> list[str]:
    """Recompute every derived figure of a results file from the raw ones it records (the
    timed seconds of each round, the matmul rates, the parameter counts) and return what
    disagrees (an empty list: the file is consistent).

    A timing cannot be re-checked without the machine it was measured on; what can be is
    the arithmetic that turned timings into the columns shown (s / epoch, samples / s,
    × baseline, % of matmul, × compute limit, ...): a slip in that arithmetic, or a file
    edited by hand, shows up here."""
    problems: list[str] = []

    def same(what: str, got: Any, want: float) -> None:
        if not (isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=rel)):
            problems.append(f"{what}: the file says {got!r}, its raw numbers give {want!r}")

    for dev, d in results["devices"].items():
        same(f"{dev} matmul_gflops", d["matmul_gflops"],
             statistics.median(d["matmul_gflops_all"]))
        rounds = d.get("rounds")
        for i, (name, info) in enumerate(d.get("data", {}).items()):
            where = f"{dev} {name}"
            if rounds and len(d["matmul_gflops_all"]) >= (i + 1) * rounds:
                same(f"{where} matmul rate", info["matmul_gflops"],
                     statistics.median(d["matmul_gflops_all"][i * rounds:(i + 1) * rounds]))
            same(f"{where} flops_per_epoch", info["flops_per_epoch"],
                 6 * info["params"] * info["n_train"])
            same(f"{where} epoch_at_matmul_rate_s", info["epoch_at_matmul_rate_s"],
                 info["flops_per_epoch"] / (info["matmul_gflops"] * 1e9))
        rows = [r for r in d.get("training", []) if not r.get("error")]
        base = {r["data"]: r for r in rows if r["path"] == "baseline"}
        for r in rows:
            where, info = f"{dev} {r['data']} {r['path']}", d["data"][r["data"]]
            same(f"{where} flops_per_sample", r["flops_per_sample"], 6 * r["params"])
            per_sample = (statistics.median(r["timed_seconds"])
                          / (r["timed_epochs"] * r["n_timed_per_epoch"]))
            same(f"{where} seconds_per_epoch", r["seconds_per_epoch"], per_sample * r["n_train"])
            same(f"{where} samples_per_second", r["samples_per_second"], 1 / per_sample)
            same(f"{where} model_gflops", r["model_gflops"],
                 r["flops_per_sample"] / per_sample / 1e9)
            same(f"{where} fraction_of_matmul", r["fraction_of_matmul"],
                 r["model_gflops"] / info["matmul_gflops"])
            same(f"{where} times_from_limit", r["times_from_limit"],
                 r["seconds_per_epoch"] / info["epoch_at_matmul_rate_s"])
            same(f"{where} timed_steps", r["timed_steps"],
                 r["timed_epochs"] * math.ceil(r["n_timed_per_epoch"] / r["batch_size"]))
            if r["data"] in base:
                ratios = [b / t for b, t in zip(base[r["data"]]["timed_seconds"],
                                                r["timed_seconds"])]
                same(f"{where} speedup_vs_baseline", r["speedup_vs_baseline"],
                     statistics.median(ratios))
        for r in d.get("breakdown", []):
            where = f"{dev} breakdown B={r['batch_size']} fused={r['fused_adam']}"
            same(f"{where} shares", r["gemm_share"] + r["adam_share"] + r["other_share"], 1.0)
            same(f"{where} gemm_fraction_of_matmul", r["gemm_fraction_of_matmul"],
                 r["gemm_gflops"] / d["matmul_gflops"])
        for r in d.get("profile", []):
            same(f"{dev} profile {r['path']} shares", sum(r["shares"].values()), 1.0)
            same(f"{dev} profile {r['path']} total", sum(r["self_cpu_ms"].values()),
                 r["total_self_cpu_ms"])
        for r in d.get("iwae", []):
            if not r.get("error"):
                same(f"{dev} iwae k={r['k']} fraction_of_matmul", r["fraction_of_matmul"],
                     r["gflops"] / d["matmul_gflops"])
    return problems

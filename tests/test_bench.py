"""The benchmark harness (benchmarks/bench.py, beside the package, not in it): a --quick run
works, writes its JSON and renders its table; the committed results files render and their
derived columns follow from their raw timings."""
import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vaetut

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH_SCRIPT = str(BENCHMARKS / "bench.py")
sys.path.insert(0, str(BENCHMARKS))  # the harness is a script folder, not a package
import bench  # noqa: E402
import bench_report  # noqa: E402

TRAIN_PATHS = ["baseline", "fit", "fit+fast", f"fit+fast B={bench.LARGE_BATCH}"]
RESULTS = sorted(p for p in (BENCHMARKS / "results").glob("*.json")
                 if not p.name.startswith(("ddp-", "notebook-times-")))


def test_the_package_holds_no_benchmark():
    assert importlib.util.find_spec("vaetut.bench") is None
    assert bench.vaetut is vaetut  # the harness measures the installed package


def test_training_paths_add_the_cuda_graph_rows_on_cuda_only(monkeypatch):
    def names(device, has_graph):
        monkeypatch.setattr(bench, "fit_has_cuda_graph", lambda: has_graph)
        return {p["name"]: p for p in bench.training_paths(torch.device(device), False, 100)}

    cuda = names("cuda", True)
    assert cuda["fit+graph"]["batch_size"] == bench.BASELINE_BATCH
    assert cuda[f"fit+graph B={bench.LARGE_BATCH}"]["batch_size"] == bench.LARGE_BATCH
    for name in ("fit+graph", f"fit+graph B={bench.LARGE_BATCH}"):
        assert cuda[name]["options"] == {"cuda_graph": True, "fused_adam": True}
    assert list(names("cpu", True)) == TRAIN_PATHS  # fit refuses cuda_graph on the CPU
    assert list(names("cuda", False)) == TRAIN_PATHS  # a vaetut.fit without the option


def test_a_quick_run_never_replaces_a_committed_results_file():
    out = Path(bench.default_out([torch.device("cpu")], quick=True))
    assert BENCHMARKS not in out.parents
    assert Path(bench.default_out([torch.device("cpu")])).parent == Path("benchmarks/results")


def test_flop_count_of_a_tiny_model_by_hand():
    model = vaetut.VAE(4, 2, hidden=(3,))
    # encoder: 4->3 (12 weights + 3 biases), mean 3->2 (6 + 2), log_var 3->2 (6 + 2)
    # decoder: 2->3 (6 + 3), 3->4 (12 + 4)
    assert bench.count_parameters(model) == 15 + 8 + 8 + 9 + 16 == 56
    assert bench.model_flops_per_sample(model) == 6 * 56
    # exact matmul FLOPs of a step: 2 forward + 2 weight-gradient + 2 input-gradient per
    # weight, but no input gradient for the first layer (12 weights): 6 * (6+6+6+12) + 4 * 12
    assert bench.gemm_flops_per_sample(model) == 6 * 30 + 4 * 12 == 228
    # IWAE: encoder (31 numbers) once per image, decoder (25) k times, 2 FLOPs each
    assert bench.iwae_flops(model, n_images=10, k=7) == 2 * 10 * (31 + 7 * 25)


def test_flop_count_of_the_mnist_model():
    model = vaetut.VAE(784, 20, hidden=(400,))
    params = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert bench.count_parameters(model) == params == 652_824
    # about 0.2 TFLOP an epoch of 60,000 images
    assert 0.2e12 < bench.model_flops_per_sample(model) * 60_000 < 0.25e12


def test_synthetic_mnist_is_binary_seeded_and_not_constant():
    x = bench.synthetic_mnist(n=500)
    assert x.shape == (500, 784) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x, bench.synthetic_mnist(n=500))
    assert not torch.equal(x, bench.synthetic_mnist(n=500, seed=1))
    mean = x.mean(0)  # pixel means vary over the image (smooth fields), not all 0.5
    assert mean.max() - mean.min() > 0.3
    assert len(x.unique(dim=0)) > 490  # independent draws, not copies


def test_peak_memory_sees_a_large_allocation_on_the_cpu():
    with bench.PeakMemory(torch.device("cpu")) as mem:
        big = torch.ones(64 * 2**20 // 4 * 4)  # 256 MB, touched
        big.add_(1)
        time.sleep(0.2)  # the sampler looks every 10 ms
        del big
    assert 200 < mem.peak_mb < 400


def test_baseline_loop_trains(digits):
    torch.manual_seed(0)
    model = vaetut.VAE(64, 4, hidden=(32,))
    losses = bench.baseline_loop(model, digits.train, epochs=3, batch_size=128, lr=3e-3,
                                 device=torch.device("cpu"))
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 3  # nats per example


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    # one thread: the structure is under test, not the speed (and a shared machine stalls
    # multi-threaded small kernels)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, BENCH_SCRIPT, "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout, out


def positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.slow
def test_quick_bench_writes_complete_positive_finite_results(quick_run):
    results, _, _ = quick_run
    assert results["schema"] == bench.SCHEMA and results["quick"] is True
    assert results["command"].startswith("python benchmarks/bench.py --quick")
    assert results["commit"] is None or len(results["commit"].split("+")[0]) >= 7
    for key in ("cpu", "torch", "torch_threads", "cpu_count"):
        assert results["machine"][key]
    assert results["date"][:2] == "20"
    cpu = results["devices"]["cpu"]
    assert list(results["devices"]) == ["cpu"] and cpu["name"]
    assert positive(cpu["matmul_gflops"])
    rows = cpu["training"]
    assert [(r["data"], r["path"]) for r in rows] == \
        [(d, p) for d in ("digits", "mnist") for p in TRAIN_PATHS]
    for r in rows:
        assert r["error"] is None, r
        for key in ("seconds_per_epoch", "samples_per_second", "speedup_vs_baseline",
                    "model_gflops", "fraction_of_matmul", "times_from_limit", "warmup_seconds",
                    "timed_steps"):
            assert positive(r[key]), (r["path"], key, r[key])
        assert math.isfinite(r["peak_memory_mb"])
        # samples/s and s/epoch describe the same measurement
        assert r["samples_per_second"] * r["seconds_per_epoch"] == pytest.approx(r["n_train"])
        assert r["model_gflops"] == pytest.approx(
            r["samples_per_second"] * r["flops_per_sample"] / 1e9)
    assert [r["speedup_vs_baseline"] for r in rows if r["path"] == "baseline"] == [1.0, 1.0]
    mnist = [r for r in rows if r["data"] == "mnist"]
    assert {r["params"] for r in mnist} == {652_824}
    assert {r["flops_per_sample"] for r in mnist} == {6 * 652_824}
    assert [(r["batch_size"], r["fused_adam"]) for r in cpu["breakdown"]] == \
        [(128, False), (128, True), (1024, False), (1024, True)]
    for r in cpu["breakdown"]:
        assert positive(r["ms_per_step"]) and positive(r["gemm_gflops"])
        assert 0 < r["gemm_share"] < 1 and 0 < r["adam_share"] < 1
        assert r["gemm_share"] + r["adam_share"] + r["other_share"] == pytest.approx(1)
    # the profile of fit's own epoch: the default path and the plain Adam loop
    assert [r["path"] for r in cpu["profile"]] == ["fit (default)", "fit(fused_adam=False)"]
    for r in cpu["profile"]:
        assert r["self_cpu_ms"]["matrix products"] > 0 and r["self_cpu_ms"]["Adam step"] > 0
        assert sum(r["shares"].values()) == pytest.approx(1)
    iwae = cpu["iwae"]
    assert [r["k"] for r in iwae] == [10, 50]
    for r in iwae:
        assert r["error"] is None and r["finite"]
        assert positive(r["seconds"]) and positive(r["gflops"])
        assert r["mean_bound"] < 0  # a log-likelihood bound of binary images, in nats


@pytest.mark.slow
def test_quick_bench_table_is_the_rendering_of_its_json(quick_run):
    results, stdout, out = quick_run
    assert stdout == bench.render_markdown(results)
    rendered = subprocess.run([sys.executable, BENCH_SCRIPT, "--render", str(out)],
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0 and rendered.stdout == stdout
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("| data |"))
    assert "s / epoch" in header and "× baseline" in header and "% of matmul" in header
    assert "× compute limit" in header and bench_report.COMPUTE_LIMIT_LEGEND in lines
    rows = [line for line in lines if line.startswith("| digits |") or
            line.startswith("| mnist |")]
    assert len(rows) == 2 * len(TRAIN_PATHS)
    assert all(line.count("|") == header.count("|") for line in rows)
    assert any(line.startswith("| k = 50 |") for line in lines)
    assert sum(line.startswith("| 1024 | fused |") for line in lines) == 1


@pytest.mark.slow
def test_quick_run_columns_follow_from_its_timings_and_a_wrong_one_is_caught(quick_run, tmp_path):
    results, _, _ = quick_run
    assert bench_report.check_consistency(results) == []
    for key, factor in (("times_from_limit", 2.0), ("fraction_of_matmul", 0.5),
                        ("speedup_vs_baseline", 1.1), ("seconds_per_epoch", 1.01)):
        wrong = copy.deepcopy(results)
        row = wrong["devices"]["cpu"]["training"][5]
        row[key] *= factor
        problems = bench_report.check_consistency(wrong)
        assert any(f"mnist {row['path']} {key}" in p for p in problems), (key, problems)
    wrong = copy.deepcopy(results)
    wrong["devices"]["cpu"]["data"]["mnist"]["epoch_at_matmul_rate_s"] /= 3
    assert bench_report.check_consistency(wrong)
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(wrong))
    refused = subprocess.run([sys.executable, BENCH_SCRIPT, "--render", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "epoch_at_matmul_rate_s" in refused.stderr


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_results_render_every_row_and_are_consistent(path):
    """The files the book's appendix shows, whichever machine measured them."""
    results = bench_report.load(path)
    assert bench_report.check_consistency(results) == []
    table = bench_report.render_markdown(results)
    assert results["machine"]["torch"] in table and results["command"] in table
    for dev, d in results["devices"].items():
        assert f"### {dev}: {d['name']}" in table
        for r in d["training"]:
            cells = next(line for line in table.splitlines()
                         if line.startswith(f"| {r['data']} | {r['path']} | {r['batch_size']} |"))
            limit = r["times_from_limit"]  # column 10: × compute limit
            assert cells.split(" | ")[9].replace(",", "") == (
                f"{limit:.1f}" if limit < 10 else f"{limit:.0f}")


def test_render_shows_a_failed_path():
    results = {
        "date": "2026-01-01", "command": "python benchmarks/bench.py", "note": None,
        "machine": {"torch": "x", "torch_threads": 2, "cpu": "c", "cpu_count": 2, "cuda": None},
        "devices": {"cpu": {"name": "c", "matmul_size": 8, "matmul_gflops": 1.0,
                            "matmul_gflops_all": [1.0], "memory_method": "m", "data": {},
                            "training": [{"data": "mnist", "path": "fit+compile",
                                          "batch_size": 1024, "error": "RuntimeError: boom"}],
                            "iwae": []}}}
    table = bench.render_markdown(results)
    assert "failed: RuntimeError: boom" in table


@pytest.mark.slow
def test_readme_table_is_replaced_between_its_markers_only(quick_run, tmp_path):
    results, stdout, out = quick_run
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    bench.update_readme(readme, out)
    first = readme.read_text()
    assert first.startswith("# Benchmarks\n\nintro\n") and stdout in first
    name = os.path.basename(out)
    edited = first.replace(stdout, "stale table\n") + "\nafter\n"
    readme.write_text(edited)
    bench.update_readme(readme, out)
    again = readme.read_text()
    assert "stale table" not in again and stdout in again and again.endswith("\nafter\n")
    assert again.count(f"<!-- bench:begin {name} -->") == 1


def test_the_wait_policy_child_reports_fit_against_the_matmul_rate_of_its_own_process():
    wait_policy = _load_wait_policy()
    r = wait_policy.child(images=256)
    assert r["epoch_s"] > 0 and r["matmul_gflops"] > 0
    # the share is fit's FLOP rate (6 x parameters x images per epoch) over the matmul rate
    params = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
    assert r["fit_gflops"] == pytest.approx(6 * params * 256 / r["epoch_s"] / 1e9)
    assert r["share"] == pytest.approx(r["fit_gflops"] / r["matmul_gflops"])


def test_each_wait_setting_decides_both_variables_whatever_the_caller_pinned():
    # numerics.env pins GOMP_SPINCOUNT, which overrides OMP_WAIT_POLICY's spin count: a
    # setting that left it inherited would measure the pin under another setting's name
    wait_policy = _load_wait_policy()
    caller = {"GOMP_SPINCOUNT": "3000", "OMP_WAIT_POLICY": "PASSIVE", "PATH": "/bin"}
    for name, extra in wait_policy.SETTINGS.items():
        env = wait_policy.child_env(extra, caller)
        assert env["PATH"] == "/bin"
        assert {k: env.get(k, "") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} == extra, name


def _load_wait_policy():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "wait_policy.py"
    spec = importlib.util.spec_from_file_location("wait_policy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

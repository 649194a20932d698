"""Data-parallel fit: 2 gloo processes on localhost against one process."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import vaetut
from vaetut.run.distributed import Context

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
FIT_ARGS = dict(epochs=2, batch_size=50, lr=3e-3, device="cpu", seed=0, progress=False)

SCRIPT = """
import json, os, sys
import torch, vaetut
from vaetut.run import distributed
from vaetut.run.steps import data_parallel_step

rank = int(os.environ["RANK"])
# the script joins the group itself (fit then uses it and leaves it up), so that the
# check after fit runs in the same group rather than in a second one on the same store
context, _ = distributed.join(torch.device("cpu"), timeout_s=20)
seen = []

def spy(model, x, *args, **kwargs):
    seen.append(x.shape[0])
    {poison}
    return vaetut.elbo(model, x, *args, **kwargs)

torch.manual_seed(0)
digits = vaetut.data.load_digits(binarize="fixed")
model = vaetut.VAE(64, 4, hidden=(32,))
fit_args = {fit_args}
{change}
history = vaetut.fit(model, digits.train[:230], digits.test[:40], objective=spy,
                     distributed=True, dist_timeout_s=20, **fit_args)
json.dump(seen, open(os.path.join(sys.argv[1], f"batches-{{rank}}.json"), "w"))

# one more global batch, by hand: this rank's share of the gradient, after DDP's average
ddp = torch.nn.parallel.DistributedDataParallel(distributed.ObjectiveModule(model, vaetut.elbo))
_, loss, global_loss = data_parallel_step(ddp, model, digits.train, torch.arange(50), 1,
                                           torch.Generator().manual_seed(7), context)
model.zero_grad()
loss.backward()
grads = {{name: p.grad for name, p in model.named_parameters()}}
distributed.leave()
if rank == 0:
    torch.save({{"state": model.state_dict(), "history": history.records, "grads": grads,
                "global_loss": global_loss}}, os.path.join(sys.argv[1], "result.pt"))
"""


def run_script(tmp_path, poison="", timeout=180, change=""):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT.format(poison=poison, fit_args=repr(FIT_ARGS), change=change))
    start = time.time()
    result = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return result, time.time() - start


def test_batch_slices_cover_the_batch_once():
    for world_size in (1, 2, 3, 5):
        for batch_len in (0, 1, 7, 50):
            parts = [Context(rank, world_size).batch_slice(batch_len) for rank in range(world_size)]
            covered = [i for s in parts for i in range(batch_len)[s]]
            assert covered == list(range(batch_len))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1


def test_distributed_without_torchrun_is_a_clear_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs a torchrun launch"):
        vaetut.fit(vaetut.VAE(64, 2), torch.rand(10, 64), distributed=True, **FIT_ARGS)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    result, _ = run_script(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # each rank saw only its half of every global batch of 50 (230 = 4 x 50 + 30)
    assert json.loads((tmp_path / "batches-0.json").read_text()) == [25, 25, 25, 25, 15] * 2
    assert json.loads((tmp_path / "batches-1.json").read_text()) == [25, 25, 25, 25, 15] * 2
    ddp = torch.load(tmp_path / "result.pt", weights_only=True)

    torch.manual_seed(0)
    digits = vaetut.data.load_digits(binarize="fixed")
    model = vaetut.VAE(64, 4, hidden=(32,))
    history = vaetut.fit(model, digits.train[:230], digits.test[:40], **FIT_ARGS)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5)
    for single, parallel in zip(history.records, ddp["history"]):
        assert single.keys() == parallel.keys()
        for key in single:
            assert parallel[key] == pytest.approx(single[key], abs=1e-3), key
    # the averaged gradient of one global batch is the gradient of its mean -ELBO
    eps = torch.randn((1, 50, 4), generator=torch.Generator().manual_seed(7))
    loss = -vaetut.elbo(model, digits.train[:50], eps=eps).elbo.mean()
    model.zero_grad()
    loss.backward()
    torch.testing.assert_close(ddp["global_loss"], loss.detach(), rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_failing_rank_stops_the_others_instead_of_hanging(tmp_path):
    poison = 'if rank == 1 and len(seen) == 3: raise RuntimeError("rank 1 broke on purpose")'
    result, seconds = run_script(tmp_path, poison)
    assert result.returncode != 0
    assert "rank 1 broke on purpose" in result.stderr + result.stdout
    assert seconds < 60  # the collective timeout is 20 s; torchrun stops the group sooner
    assert not (tmp_path / "result.pt").exists()


@pytest.mark.slow
def test_the_cli_trains_unchanged_under_torchrun(tmp_path):
    result = subprocess.run([*TORCHRUN, "-m", "vaetut", "train", "--epochs", "2", "--out",
                             str(tmp_path), "--no-progress"], capture_output=True, text=True,
                            timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "history.json", "samples.png",
                                                     ".checkpoint.pt.lock"}
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1, 2]
    assert result.stdout.count('"epoch": 2') == 1  # only rank 0 reports


def test_more_processes_than_gpus_stop_at_once_with_both_numbers(monkeypatch):
    from vaetut.run import distributed

    for name, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT="29999").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"2 processes per node need 2 GPUs.*but 1 is visible"
                                         r".*--nproc-per-node 1.*gloo"):
        distributed.join(torch.device("cuda"))
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_ranks_launched_with_different_settings_are_stopped(tmp_path):
    result, seconds = run_script(tmp_path, change='if rank == 1: fit_args["lr"] = 1e-3')
    assert result.returncode != 0
    assert "were given different runs (lr: 0.003 on rank 0, 0.001 on rank 1" in result.stderr
    assert not (tmp_path / "batches-0.json").exists() and seconds < 60

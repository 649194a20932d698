"""Data parallelism with PyTorch's own engine: torch.distributed + DistributedDataParallel.

Launch any training with `torchrun --nproc-per-node N ...`; `fit` sees the variables
torchrun sets, joins the process group (nccl on CUDA, gloo on CPU), wraps the model in
DDP and gives each process its slice of every global batch. The noise eps of the whole
batch is drawn on every process from the same seeded generator and sliced too, so N
processes follow the same trajectory as one process with the same global batch and seed
(up to the order of floating-point sums).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among world_size processes on the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, history and the progress bar."""
        return self.rank == 0

    def batch_slice(self, batch_len: int) -> slice:
        """This rank's contiguous part of a global batch of `batch_len` examples; the parts
        of all ranks differ in length by at most one and together cover the batch."""
        base, extra = divmod(batch_len, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def env_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", 0))


def join(device: torch.device, timeout_s: float = 120.0) -> tuple[Context, torch.device]:
    """Join the process group described by torchrun's variables.

    Backend nccl on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on the CPU. A
    collective that waits longer than `timeout_s` for a rank (one that crashed, say)
    raises instead of hanging.
    """
    if not launched_by_torchrun():
        missing = [n for n in TORCHRUN_VARIABLES if n not in os.environ]
        raise ValueError(f"distributed=True needs a torchrun launch; {', '.join(missing)} not set "
                         "(run: torchrun --nproc-per-node N -m vaetut train ...)")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        # each process needs a GPU of its own; every rank sees the same numbers, so all
        # of them stop here at once instead of one failing deep inside CUDA
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        visible = torch.cuda.device_count()
        if max(per_node, local_rank + 1) > visible:
            raise ValueError(
                f"{per_node} processes per node need {per_node} GPUs on device={device.type!r}, "
                f"but {visible} {'is' if visible == 1 else 'are'} visible: launch at most "
                f"{visible} (torchrun --nproc-per-node {visible}), or train on the CPU with "
                "gloo (device='cpu', or --device cpu)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"distributed training runs on cuda or cpu, not device={device}")
    if not dist.is_initialized():  # a group made by the caller (or an earlier fit) is reused
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return Context(rank, world_size, local_rank), device


def leave() -> None:
    """Tear down the process group, once no more collectives will run in this process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; a no-op in a single process."""
    if context.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class ObjectiveModule(torch.nn.Module):
    """The objective as a module, so that DDP sees the forward pass it must synchronise.

    DDP averages gradients over ranks during backward; it needs the computation to go
    through its own forward, and the VAE's objective calls the encoder and the decoder
    separately, so this module's forward is the objective itself.
    """

    def __init__(self, model: torch.nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x, n_samples, generator, eps):
        return self.objective(self.model, x, n_samples, generator, validate=False, eps=eps)


def check_same_run(context: Context, definition: dict) -> None:
    """Stop every rank, with a ValueError naming what differs, unless all ranks were
    launched with the same run definition (lr, seed, batch size, objective, a hash of
    their data, epochs, model, checkpoint...): ranks launched with different settings
    would otherwise train together on different data and report one result."""
    if context.world_size == 1:
        return
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, {k: repr(v) for k, v in definition.items()})
    differences = []
    for rank, other in enumerate(gathered):
        if rank == 0 or other == gathered[0]:
            continue
        keys = sorted(set(other) | set(gathered[0]), key=str)
        differences += [f"{k}: {gathered[0].get(k)} on rank 0, {other.get(k)} on rank {rank}"
                        for k in keys if other.get(k) != gathered[0].get(k)]
    if differences:
        raise ValueError("the ranks of this torchrun launch were given different runs ("
                         + "; ".join(differences[:6])
                         + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
                         + "): launch every rank with the same arguments and data")

"""Running the trainer as one process or as N processes under torchrun (DistributedDataParallel).

torchrun starts one process per device and tells each who it is through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without them the trainer runs as a
single process through the same code: a world of size 1 whose collectives do nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """Who this process is among the processes that train one model together."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes logs, plots and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; under torchrun each process takes GPU LOCAL_RANK."""
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU here: "
                               "use --device cpu (or auto).")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} "
                               f"CUDA GPU(s): start at most one process per GPU (--nproc-per-node).")
        return torch.device("cuda", local_rank)
    if choice == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("--device mps was asked for, but this PyTorch has no MPS backend: "
                               "use --device cpu (or auto).")
        return torch.device("mps")
    if choice == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Unknown device {choice!r}: use auto, cpu, cuda or mps.")


def init_world(device_choice: str = "auto") -> World:
    """Join the process group when torchrun started us (NCCL on CUDA, gloo on the CPU); else a world of one."""
    if not launched_by_torchrun():
        return World(device=resolve_device(device_choice))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_choice, local_rank)
    if device.type == "mps":
        raise RuntimeError("torchrun with --device mps is not supported by PyTorch: "
                           "use one process on MPS, or CUDA GPUs / the CPU for several.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def close_world(world: World) -> None:
    if world.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it (a no-op for one process)."""
    if world.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, world: World):
    """Rank 0's `obj` on every rank (any picklable object)."""
    if not world.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, world: World) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not world.is_distributed:
        return [obj]
    gathered = [None] * world.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


class ShardedEvalSampler(Sampler[int]):
    """Rank r evaluates items r, r + W, r + 2W, ... : every item exactly once over all ranks.

    torch's DistributedSampler pads the split with repeated items so that every rank gets the
    same count; that is right for training (DDP needs equal step counts) but would count some
    samples twice in a metric. Evaluation needs no gradient sync, so the shards may differ by one.
    """

    def __init__(self, num_items: int, world: World):
        self.indices = range(world.rank, num_items, world.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

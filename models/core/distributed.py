"""Several processes (torchrun) sharing one job: torch.distributed, gloo on CPU, NCCL on GPU.

Without torchrun (no WORLD_SIZE, or 1) nothing here creates a process group: `world()` is the
single process, `shard` returns every item, `gather` returns the caller's own list. Under
torchrun, `init(device)` joins the group once (rendezvous from torchrun's environment, so
`--nnodes` / `--rdzv-endpoint` work as usual) and gives each process its own GPU (LOCAL_RANK).

Work is sharded by index: item i goes to rank i mod world size, and results are gathered back in
item order, so a sharded job returns exactly what the single process would, whatever the number
of ranks (up to float summation where results are summed; `merge_in_order` sums in item order).
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TIMEOUT = datetime.timedelta(hours=12)  # a rank may wait a whole stage (e.g. rank 0's CPU cost stage)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def mine(self, n: int) -> list[int]:
        """The indices 0..n-1 this rank works on."""
        return list(range(self.rank, n, self.size))


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("litevar_local", default=False)


def world() -> World:
    """This process's place: the single process without torchrun, or inside `local()`."""
    import torch.distributed as dist
    if not _LOCAL.get() and dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextlib.contextmanager
def local():
    """Within it this process works alone (one item of a sharded job: nothing inside shards or
    communicates again)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def init(device: str | torch.device | None = None) -> World:
    """Join torchrun's process group (once; gloo on CPU, NCCL on CUDA); the single process
    otherwise. On CUDA each process takes GPU LOCAL_RANK."""
    import torch.distributed as dist
    if not launched():
        return World()
    if not dist.is_initialized():
        from litevar.models.core.device import device_of
        dev = device_of(device if device is not None else "cpu")
        dev.join(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(dev.dist_backend, timeout=TIMEOUT)
    return world()


def local_device(device: str | torch.device) -> torch.device:
    """This process's device: its own GPU under torchrun (LOCAL_RANK), else `device`."""
    from litevar.models.core.device import device_of
    rank = int(os.environ.get("LOCAL_RANK", "0")) if launched() else None
    return device_of(device).local(rank).torch


def shutdown() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        import torch.distributed as dist
        dist.barrier()


@dataclass(frozen=True)
class Group:
    """Some of the ranks, with their own process group (torch.distributed.new_group)."""

    ranks: tuple[int, ...]
    handle: object = None

    def world(self) -> World:
        return World(self.ranks.index(world().rank), len(self.ranks))


def split(key) -> list[Group]:
    """The ranks grouped by `key` (any picklable value each rank gives; equal keys, one group),
    groups in order of their first rank. Collective: every rank calls it."""
    import torch.distributed as dist
    w = world()
    if not w.distributed:
        return [Group((0,))]
    keys: list = [None] * w.size
    dist.all_gather_object(keys, key)
    ranks: dict = {}
    for r, k in enumerate(keys):
        ranks.setdefault(repr(k), []).append(r)
    return [Group(tuple(rs), dist.new_group(list(rs))) for rs in ranks.values()]  # every rank creates every group


def gather(results: dict[int, object], n: int, group: Group | None = None) -> list:
    """Every rank's {index: result} (this rank's share of 0..n-1) as one list in index order, on
    every rank (of `group`, default all). Results are pickled (CPU tensors, frames, numbers)."""
    w = group.world() if group is not None else world()
    if not w.distributed:
        return [results[i] for i in range(n)]
    import torch.distributed as dist
    parts: list = [None] * w.size
    dist.all_gather_object(parts, results, group=None if group is None else group.handle)
    merged = {i: r for part in parts for i, r in part.items()}
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"distributed gather: no rank returned items {missing[:5]}")
    return [merged[i] for i in range(n)]


def run_sharded(fn, items: Sequence) -> list:
    """[fn(item) for item in items], each item on rank index mod size (alone: `local`), gathered
    in item order on every rank."""
    w = world()
    out = {}
    for i in w.mine(len(items)):
        with local():
            out[i] = fn(items[i])
    return gather(out, len(items))


def broadcast(obj, src: int = 0):
    """`obj` of rank `src` on every rank."""
    w = world()
    if not w.distributed:
        return obj
    import torch.distributed as dist
    box = [obj if w.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def merge_in_order(parts: Sequence[dict]) -> dict:
    """Sum dicts of tensors (or numbers) key by key, in the order given: the same float
    summation order whatever rank computed each part."""
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            out[k] = v if k not in out else out[k] + v
    return out

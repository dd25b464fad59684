"""Data parallelism for one run under `accelerate launch` (or torchrun): who am I, and what is shared.

A soft prompt is a few thousand parameters, so a wrapper such as DDP buys nothing: each process
scores its slice of every global batch, the trainable parameters' gradients are summed across
processes once per optimiser step, and every process then takes the same optimiser step, so all
hold the same parameters. Evaluation is sharded the same way and gathered. Only the main process
writes artifacts and shows progress. Process groups come from Accelerate (`PartialState`), which
reads the launcher's environment and picks NCCL on GPUs and gloo on CPUs.

With one process (no launcher) nothing here touches `torch.distributed`, and Accelerate is not
imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from softprompt.preemption import agree_before_stopping, raise_if_stopped, stop_requested


@dataclass
class DataParallel:
    """This process's place in a data-parallel group (rank 0 of 1 when not launched in parallel)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = field(default=None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: list) -> list:
        """This process's share of `items`: every world-th one, starting at its rank."""
        return items[self.rank :: self.world] if self.active else items

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (a missing gradient counts as zero)."""
        if not self.active:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of small float vectors over the processes (losses, counts)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.sum_(t)
        return t.tolist()

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum a tensor over the processes in place: one collective, no host round trip (NCCL on GPUs)."""
        if not self.active:
            return
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def broadcast_(self, params: Iterable[torch.Tensor]) -> None:
        """Make every process hold the main process's values (guards against any init difference)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (picklable Python objects only, produced by this code)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def raise_if_stopped(self) -> None:
        """A safe point every process reaches together: KeyboardInterrupt in all of them if any got a stop signal
        (one small collective), so none is left waiting in a collective for one that stopped alone."""
        if not self.active:
            raise_if_stopped()
        elif self.sum([1.0 if stop_requested() else 0.0])[0] > 0:
            raise KeyboardInterrupt

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


SINGLE = DataParallel()


def launched_in_parallel() -> bool:
    """True under `accelerate launch` / torchrun / mpirun with more than one process."""
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def setup_data_parallel(device: str = "auto") -> DataParallel:
    """Join the launcher's process group (via Accelerate) or return the single-process default."""
    if not launched_in_parallel():
        return SINGLE
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    agree_before_stopping()  # a stop signal is honoured where every process checks together
    return DataParallel(rank=state.process_index, world=state.num_processes, device=state.device)

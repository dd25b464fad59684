"""Training steps replayed as CUDA graphs: a step's forward and backward captured once per batch shape, then
replayed with one launch.

Why: a training step of these small models on a GPU is bound by the host, not the GPU. Measured on an H100
(bench/README.md, "GPU results"): SmolLM2-135M at batch 8 does 13.5 ms of GPU work per step but takes
~100 ms, the time the host needs to launch its ~3,000 kernels; PEFT's recipe pays the same. A CUDA graph
records the kernels once and replays them all with one launch.

How: `StepGraphs.run(fn, host)` returns `fn(batch)` (a tuple of tensors: the loss and the gradients), where
`batch` is `host` on the device. The first batch of a shape (`batching.shape_key`, plus the caller's `key`)
is copied to a static device buffer; `fn` runs `warmup` times on the capture stream (lazy initialisation,
the low-precision weight copy and cuBLAS's workspace happen there, outside the capture), then once under
capture, reading the batch from that buffer. A later batch of the shape is packed, copied into the buffer
(one host-to-device copy) and the graph replayed. Batches are padded to length buckets
(`batching.collate(..., bucket=...)`) so shapes repeat. All graphs share one memory pool, so a replay may
overwrite another graph's outputs: they are cloned out at once.

What a captured `fn` must not do (CUDA refuses some of it; the rest would silently replay stale values):
read a device value on the host, depend on a Python value that is not part of the key, or read tensors
that are replaced rather than updated in place between steps (parameters updated by the optimiser in place
are fine). `training.step.TrainStep.loss_and_grads` is such a function (tests/test_gpu_path.py runs it on the meta
device, where any read back raises). If a capture fails anyway, every later step runs eagerly, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from softprompt.data.batching import Batch, pack, shape_key, unpack

LENGTH_BUCKET = 16  # rows are padded to a multiple of this many tokens or more (batching.bucketed_length)
# A replayed step splits its batch into 2 or 4 equal groups of similar length (`SPLIT_PARTS`: equal sizes keep the
# shapes few), one graph each, where the padding saved exceeds this many tokens per extra forward
# (`TrainStep.length_groups`; the gradient is the same sum). Estimated from the H100 graph steps of SmolLM2 on
# RTE (bench/README.md "GPU results"): 16.7 ms at batch 8 and 48.8 ms at 32, i.e. ~6 ms of a step does not grow
# with its tokens: about what 1,300 tokens cost.
SPLIT_OVERHEAD_TOKENS = 1024
SPLIT_PARTS = (1, 2, 4)
WARMUP_FIRST, WARMUP = 3, 1  # eager runs before a capture: the first capture of a run, and every later one
MAX_GRAPHS = 48  # shapes captured at most (each holds its static buffers); a batch of a shape beyond runs eagerly

Outputs = tuple[torch.Tensor | None, ...]
Step = Callable[[Batch], Outputs]


class PinnedHostConstants(TorchFunctionMode):
    """While capturing: host data a forward copies to the GPU goes through pinned memory, kept alive here.

    CUDA cannot capture a copy from pageable host memory, and some models build constants from Python
    numbers on every forward (BLOOM's ALiBi slopes: `torch.tensor(2 ** ..., device=cuda)`; measured on an H100,
    every BLOOM capture failed on it). From a pinned buffer the copy is captured and replayed, reading the
    same constant every time; `keep` holds the buffers as long as the graph."""

    def __init__(self, keep: list[torch.Tensor]) -> None:
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and torch.device(kwargs.get("device") or "cpu").type == "cuda":
            device = kwargs.pop("device")
            host = func(*args, **kwargs)
            if host.device.type == "cpu":
                host = host.pin_memory()
                self.keep.append(host)
            return host.to(device, non_blocking=True)
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and _pageable(args[0]):
            pinned = args[0].pin_memory()
            self.keep.append(pinned)
            args = (pinned, *args[1:])
        return func(*args, **kwargs)


def _pageable(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_pinned()


class CudaGraphCapture:
    """Captures with torch.cuda.CUDAGraph, all graphs in one memory pool, on one side stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)

    def capture(self, step: Callable[[], Outputs], warmup: int) -> tuple[Callable[[], None], Outputs]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        graph, constants = torch.cuda.CUDAGraph(), []
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream), PinnedHostConstants(constants):
            outputs = step()

        def replay() -> None:
            graph.replay()  # `constants` lives as long as this function: the graph's copies read them

        replay.constants = constants  # type: ignore[attr-defined]
        return replay, outputs


class EagerReplay:
    """What a graph does, where there are none (tests on a CPU): "capture" runs the step once, a "replay" runs
    it again from the static inputs and writes its results into the captured output tensors."""

    def capture(self, step: Callable[[], Outputs], warmup: int) -> tuple[Callable[[], None], Outputs]:
        for _ in range(warmup):
            step()
        outputs = step()

        def replay() -> None:
            for out, new in zip(outputs, step(), strict=True):
                if out is not None and new is not None:
                    out.copy_(new)

        return replay, outputs


@dataclass
class Captured:
    static: torch.Tensor  # the packed batch buffer the graph reads
    replay: Callable[[], None]
    outputs: Outputs


class StepGraphs:
    """One captured graph per batch shape; see the module docstring."""

    def __init__(self, device: torch.device, capture=None, max_graphs: int = MAX_GRAPHS) -> None:
        self.device, self.max_graphs = torch.device(device), max_graphs
        self.capturer = capture if capture is not None else CudaGraphCapture(self.device)
        self.graphs: dict[tuple, Captured] = {}
        self.failed: str | None = None  # why capturing stopped (every step runs eagerly since)
        self.captures = self.replays = self.eager = 0

    def run(self, fn: Step, host: Batch, key: Sequence = ()) -> Outputs:
        """`fn(host on the device)`, from the graph of `host`'s shape (captured now if it is new); eagerly once a
        capture failed, or for a new shape beyond `max_graphs`."""
        entry = None if self.failed is not None else self._loaded(fn, host, (shape_key(host), *key))
        if entry is None:
            self.eager += 1
            return fn(host.to(self.device))
        entry.replay()
        self.replays += 1
        return tuple(None if out is None else out.clone() for out in entry.outputs)

    def _loaded(self, fn: Step, host: Batch, k: tuple) -> Captured | None:
        """The graph of shape `k` with `host` in its static buffer: copied into the one captured before, or captured
        now (None: a new shape beyond the limit, or the capture failed)."""
        entry = self.graphs.get(k)
        if entry is not None:
            flat = pack(host)
            entry.static.copy_(flat.pin_memory() if self.device.type == "cuda" else flat, non_blocking=True)
            return entry
        if len(self.graphs) >= self.max_graphs:  # shapes keep coming: no more graph memory for them
            return None
        static = pack(host).to(self.device)
        try:
            replay, outputs = self.capturer.capture(lambda: fn(unpack(static, host)), WARMUP if self.graphs else WARMUP_FIRST)
        except RuntimeError as e:  # a forward that reads a value back cannot be captured
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(
                f"softprompt: CUDA graph capture failed ({self.failed}): training steps run without graphs from here",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        entry = self.graphs[k] = Captured(static, replay, outputs)
        self.captures += 1
        return entry

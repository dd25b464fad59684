"""Shared helpers of the benchmarks: machine description, matmul peaks, memory high-water marks, FLOPs.

Run the benchmarks from the repository root with the project's interpreter, e.g.
`.venv/bin/python bench/train_vs_peft.py`; see bench/README.md for the command lines and numbers.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_average() -> str:
    """`uptime`'s load averages (1, 5, 15 min): other processes share these 2 cores."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict:
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    import peft
    import transformers

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 7) -> float:
    """Median FLOP/s of an n x n x n matmul in `dtype` (the yardstick for MFU)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def peaks(reps: int = 7) -> dict[str, float]:
    return {"bf16": matmul_peak(torch.bfloat16, reps=reps), "fp32": matmul_peak(torch.float32, reps=reps)}


def memory_high_water_mb() -> dict[str, float]:
    """This process's peak resident memory (MiB): VmHWM from /proc/self/status.

    (ru_maxrss is no use in a worker: Linux carries the parent's maximum across fork + exec.)
    """
    hwm = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"vmhwm_mb": hwm}


def run_worker(script: Path, args: list[str]) -> dict:
    """Run `script --worker ...` in a fresh interpreter and parse the JSON line it prints last."""
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def non_embedding_params(model) -> int:
    """Parameters the per-token matmuls use: all but the input embedding and the LM head (counted apart)."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def step_flops(model, tokens: int, head_rows: int) -> float:
    """Model FLOPs of a frozen-model prompt-tuning step: forward + backward to the inputs.

    4 x non-embedding parameters per token computed, plus 4 x d x vocab per LM-head row
    (forward and the backward to the hidden state; no weight gradients anywhere).
    """
    d, vocab = model.get_output_embeddings().weight.shape[1], model.get_output_embeddings().weight.shape[0]
    return 4.0 * non_embedding_params(model) * tokens + 4.0 * d * vocab * head_rows


def med(xs) -> float:
    return float(statistics.median(xs))


def fmt_table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of `rows` (dicts) over `cols`."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finish(info: dict, rows: list[dict], json_path: Path | None, cols: list[str] | None = None) -> None:
    """Print the results table (markdown) and write everything measured to `json_path` if given."""
    print(fmt_table(rows, cols or list(rows[0])))
    if json_path:
        json_path.write_text(json.dumps(info, indent=1))

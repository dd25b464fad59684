"""GPU check (run on a CUDA machine): the CUDA path agrees with CPU, trains, resumes, runs a tiny study.

Needs no download: builds random models in the shapes of a tiny test model and of SmolLM2-135M, and a
toy RTE-shaped data folder. Usage: PYTHONPATH=src python3 bench/gpu_smoke.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS = [
    {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
    {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
    {"premise": "A charming movie.", "hypothesis": "The movie is good.", "label": "entailment"},
    {"premise": "A boring movie.", "hypothesis": "The movie is charming.", "label": "not_entailment"},
]


def toy_data(root: Path) -> Path:
    d = root / "data" / "rte"
    d.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train.jsonl", ROWS * 8), ("val.jsonl", ROWS * 2)):
        with open(d / name, "w") as f:
            for i, r in enumerate(recs):
                f.write(json.dumps(dict(r, idx=i)) + "\n")
    return root / "data"


def tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = [r["premise"] + " " + r["hypothesis"] + " Question: True or False? Answer:" for r in ROWS] * 50
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>")


def model_dir(root: Path, tok, shape: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if shape == "smollm2":  # SmolLM2-135M's shapes (random weights): 30 layers, d=576, vocab 49,152
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
    else:
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    d = root / f"model-{shape}"
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-smoke-out"))
    ap.add_argument("--cpu-dry-run", action="store_true", help="run the same steps on CPU (to check the script itself)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cpu" if args.cpu_dry_run else "cuda"
    n_big = 4 if args.cpu_dry_run else 64
    assert args.cpu_dry_run or torch.cuda.is_available(), "no CUDA device"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    report: dict = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__}
    from softprompt.config import TrainConfig
    from softprompt.data.batching import encode_examples
    from softprompt.model.backbones import load_backbone, resolve_compute_dtype
    from softprompt.scoring import choice_scores
    from softprompt.tasks import get_task
    from softprompt.training import train

    root = Path(tempfile.mkdtemp())
    tok = tokenizer()
    data = toy_data(root)
    tiny = model_dir(root, tok, "tiny")

    # 1. CPU fp32 vs CUDA fp32 / bf16 on the same prompt and examples
    cpu = load_backbone(str(tiny), device="cpu")
    gpu = load_backbone(str(tiny), device=dev)
    exs = get_task("rte").load("validation", data)
    enc = encode_examples(exs, tok, n_prompt=4)
    prompt = torch.randn(4, 64) * 0.1
    a = choice_scores(cpu.model, enc, prompt, pad_id=tok.pad_token_id)
    b = choice_scores(gpu.model, enc, prompt.to(dev), pad_id=tok.pad_token_id)
    c = choice_scores(
        gpu.model, enc, prompt.to(dev), pad_id=tok.pad_token_id, compute_dtype=resolve_compute_dtype("auto", gpu.device)
    )
    diff32 = max(abs(x - y) for p, q in zip(a.logprobs, b.logprobs) for x, y in zip(p, q))
    diff16 = max(abs(x - y) for p, q in zip(a.logprobs, c.logprobs) for x, y in zip(p, q))
    report["cpu_vs_cuda_fp32_max_abs_logprob_diff"] = diff32
    report["cpu_vs_cuda_bf16_max_abs_logprob_diff"] = diff16
    report["same_predictions_fp32"] = a.predictions == b.predictions
    print("scores", report, flush=True)

    # 2. train on CUDA twice (determinism) and resume
    cfg = TrainConfig(task="rte", model=str(tiny), tokens=4, epochs=5, batch_size=8, lr=0.1, data_dir=str(data), device=dev)
    t0 = time.perf_counter()
    r1 = train(cfg, root / "run1", progress=False)
    report["tiny_train_s"] = round(time.perf_counter() - t0, 2)
    r2 = train(cfg, root / "run2", progress=False)
    losses = [h["train_loss"] for h in r1.history]
    report["tiny_losses"] = losses
    report["cuda_repeat_identical"] = [h["train_loss"] for h in r2.history] == losses
    print("train", losses, flush=True)

    # 2b. Ctrl-C mid-run on CUDA, then --resume: the optimiser moments go back onto the GPU and the
    # result equals the uninterrupted run's
    import softprompt.training.step as step_mod

    real, calls = step_mod.LOSSES["choices"], {"n": 0}

    def interrupt_on_7th(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    step_mod.LOSSES["choices"] = interrupt_on_7th
    try:
        train(cfg, root / "run3", progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        step_mod.LOSSES["choices"] = real
    r3 = train(cfg, root / "run3", resume=True, progress=False)
    from safetensors.torch import load_file

    p1, p3 = (load_file(str(root / d / "prompt.safetensors"))["prompt"] for d in ("run1", "run3"))
    report["cuda_resume_identical"] = [h["train_loss"] for h in r3.history] == losses and torch.equal(p1, p3)
    print("resume", report["cuda_resume_identical"], flush=True)

    # 3. throughput on a SmolLM2-135M-shaped random model, bf16 autocast
    big = model_dir(root, tok, "smollm2")
    bb = load_backbone(str(big), device=dev)
    from softprompt.data.batching import collate
    from softprompt.scoring import autocast_context, batch_choice_scores, choice_loss

    long_exs = [type(exs[0])(" ".join([exs[0].context] * 12), exs[0].choices, 0) for _ in range(n_big)]
    enc = encode_examples(long_exs, tok, n_prompt=20, max_length=512)
    tokens = sum(len(r.ids) + 20 for e in enc for r in e.rows)
    p = torch.nn.Parameter(torch.randn(20, 576, device=dev) * 0.02)
    opt = torch.optim.AdamW([p], lr=1e-3)
    batch = collate(enc, tok.pad_token_id)
    for dtype in (torch.float32, torch.bfloat16):
        for i in range(8):
            if i == 3:
                sync()
                t0 = time.perf_counter()
            with autocast_context(bb.device, dtype):
                loss = choice_loss(batch_choice_scores(bb.model, p, batch), batch.labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
        sync()
        dt = (time.perf_counter() - t0) / 5
        non_emb = sum(q.numel() for n, q in bb.model.named_parameters() if "embed" not in n)
        report[f"smollm2_shape_step_{str(dtype)[6:]}"] = {
            "examples_per_s": n_big / dt,
            "tokens_per_s": tokens / dt,
            "model_tflops": 4 * non_emb * tokens / dt / 1e12,
        }
    print("throughput", {k: v for k, v in report.items() if k.startswith("smollm2")}, flush=True)

    # 4. a whole tiny study on CUDA
    cfg_text = f"""
[study]
name = "gpu-smoke"
model = "{tiny}"
tasks = ["rte"]
seeds = [0, 1]
data_dir = "{data}"
[train]
device = "{dev}"
tokens = 4
epochs = 3
batch_size = 8
lr = 0.1
[baselines]
methods = ["majority", "no_prompt", "english_prompt", "finetune", "lora"]
"""
    (root / "study.toml").write_text(cfg_text)
    from softprompt.study import run_study

    t0 = time.perf_counter()
    res = run_study(root / "study.toml", root / "study", progress=False)
    report["tiny_study_s"] = round(time.perf_counter() - t0, 2)
    report["tiny_study_device"] = res["setup"]["device"]
    report["tiny_study_compute_dtype"] = res["setup"]["compute_dtype"]
    (out / "report.html").write_bytes((root / "study" / "report.html").read_bytes())
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = report["same_predictions_fp32"] and diff32 < 1e-3 and losses[-1] < losses[0] and report["cuda_resume_identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

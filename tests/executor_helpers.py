"""What the executor tests share (Ray's and the worker processes'): a tiny study on disk, and how two studies' results
and prompts are compared."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import _tiny_model
from tests.test_study import CONFIG

EPOCHS = 60  # 3 optimiser steps each, a checkpoint after every step: a run lasts a second or more, time to kill it midway
SEEDS = (0, 1)
METHODS = '["majority", "no_prompt", "english_prompt", "lora"]'
TOY_ROWS = [
    {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
    {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
    {"premise": "A charming movie.", "hypothesis": "The movie is good.", "label": "entailment"},
    {"premise": "A boring movie.", "hypothesis": "The movie is charming.", "label": "not_entailment"},
]


def write_study_inputs(root: Path, tiny_tokenizer) -> Path:
    """A tiny llama saved to a folder, RTE-shaped toy data and a study config over them (1 task x 2 seeds) in `root`."""
    model_dir = root / "tiny-model"
    _tiny_model("llama", len(tiny_tokenizer)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = root / "data"
    (data / "rte").mkdir(parents=True)
    for name, rows in (("train.jsonl", TOY_ROWS * 3), ("val.jsonl", TOY_ROWS)):
        (data / "rte" / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(rows)))
    text = (
        CONFIG.format(model=model_dir, data=data, methods=METHODS)
        .replace("seeds = [0, 1, 2]", f"seeds = {list(SEEDS)}")
        .replace("epochs = 2", f"epochs = {EPOCHS}\ncheckpoint_every = 1")
    )
    (root / "study.toml").write_text(text)
    return root


def one_thread():
    """Torch threads of this process set to 1, as each Ray unit gets with --cpus-per-run 1, and the old count.

    The same thread count makes the CPU kernels reduce in the same order, so results are bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return before


def comparable(results: dict, out: Path) -> tuple[dict, dict]:
    """results.json without what differs between any two invocations: the study directory and wall times."""
    r = json.loads(json.dumps(results).replace(str(out), "OUT"))

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("wall_time_s", "elapsed_s")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    setup = r.pop("setup")
    return strip(r), setup


def assert_same_prompts(a: Path, b: Path) -> None:
    for seed in SEEDS:
        for name in ("prompt.safetensors", "best.safetensors"):
            x = load_file(str(a / "runs" / f"rte-s{seed}" / name))
            y = load_file(str(b / "runs" / f"rte-s{seed}" / name))
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), (seed, name, k)


def write_transfer_study(inputs: Path, config: Path, extra: str = "") -> Path:
    """`config`: the tiny model on RTE and a toy task, seed 0, each task's run also started from the other's trained
    prompt ([transfer] init), plus `extra` TOML."""
    from tests.test_sweeps import TOY_TASK

    toy = inputs / "data" / "toy.toml"  # its data files are relative to it
    toy.write_text(TOY_TASK)
    text = (
        CONFIG.format(model=inputs / "tiny-model", data=inputs / "data", methods='["majority"]')
        .replace('tasks = ["rte"]', f'tasks = ["rte", "{toy}"]')
        .replace("seeds = [0, 1, 2]", "seeds = [0]")
    )
    config.write_text(text + "[transfer]\ninit = true\n" + extra)
    return config


def assert_transferred_from_their_sources(res: dict, out: Path) -> None:
    """Every run trained, and each transferred run started from its source run's finished prompt (its digest)."""
    import hashlib

    assert set(res["setup"]["actions"].values()) == {"trained"} and len(res["setup"]["actions"]) == 4
    for a, b in (("rte", "toy"), ("toy", "rte")):
        record = json.loads((out / "runs" / f"{b}-from-{a}-s0" / "run.json").read_text())
        source = out / "runs" / f"{a}-s0" / "prompt.safetensors"
        assert record["prompt"]["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()

"""The GPU benchmarks' --cpu-dry-run (issue #13): the code a GPU session will run, end to end on CPU with
tiny random models of both families (llama, BLOOM), a tiny tokenizer and toy RTE/SST-2 data, so a scarce
GPU session does not discover the scripts' bugs. No timing is asserted: only that every arm ran, counted
its work, and that the float32 scorers agree."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import BENCH, bench_importable

RTE = [
    {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
    {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
    {"premise": "A charming movie.", "hypothesis": "The movie is good.", "label": "entailment"},
    {
        "premise": "A boring movie, it seems, that nobody liked at all.",
        "hypothesis": "The movie is charming.",
        "label": "not_entailment",
    },
]
SST2 = [("a charming movie", 1), ("a boring and bad movie that the dog ran away from", 0), ("good", 1), ("bad , boring", 0)]


@pytest.fixture(scope="module")
def bench():
    """The bench/ scripts as modules (they put src/ on sys.path themselves)."""
    with bench_importable():
        import eval_vs_naive
        import gpu_tables
        import project_study_time
        import train_vs_peft

        yield {"train": train_vs_peft, "eval": eval_vs_naive, "tables": gpu_tables, "project": project_study_time}


CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def carry(tmp_path_factory, tiny_tokenizer) -> Path:
    """A bench/carry-shaped folder: tokenizer/ (saved, loaded back by path as on the GPU; with a chat template, as
    SmolLM2's has, so that --prompt-format auto resolves to chat) and data/{rte,sst2}."""
    return write_carry(tmp_path_factory.mktemp("carry"), tiny_tokenizer, chat_template=CHAT_TEMPLATE)


def write_carry(root: Path, tokenizer, *, chat_template: str | None = None) -> Path:
    """tokenizer/ (a copy, with `chat_template` when given) and data/rte, data/sst2 under `root`, as bench/carry holds them."""
    tok = copy.deepcopy(tokenizer)
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(root / "tokenizer")
    (root / "data" / "rte").mkdir(parents=True)
    (root / "data" / "sst2").mkdir(parents=True)
    for name, rows in (("train.jsonl", RTE * 3), ("val.jsonl", RTE * 2)):
        (root / "data" / "rte" / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(rows)))
    for name, rows in (("train.tsv", SST2 * 3), ("dev.tsv", SST2 * 2)):
        (root / "data" / "sst2" / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return root


def _common_args(carry: Path, shape: str) -> list[str]:
    return ["--cpu-dry-run", "--shape", shape, "--tokenizer", str(carry / "tokenizer"), "--data-dir", str(carry / "data")]


@pytest.mark.parametrize(("shape", "task", "model_class"), [("smollm2-135m", "rte", "Llama"), ("bloomz-560m", "sst2", "Bloom")])
def test_train_vs_peft_dry_run(bench, carry, tmp_path, shape, task, model_class):
    out = tmp_path / "train.json"
    arms = ["softprompt", "softprompt-kv_tree", "softprompt-plain", "peft", "peft-bf16"]
    argv = [*_common_args(carry, shape), "--task", task, "--batch-size", "32", "--warmup-steps", "3", "--val", "4"]
    argv += ["--sync-every", "8", "--profile-steps", "1"]  # as the suite: both timed steps in one block between two syncs
    bench["train"].main([*argv, "--arms", ",".join(arms), "--time-budget", "600", "--json", str(out)])
    info = json.loads(out.read_text())
    assert info["model"]["class"] == f"{model_class}ForCausalLM"
    assert info["model"]["parameters"] < 1_000_000 + 400 * 64  # the tiny family member, not the real shape
    assert info["args"]["batch_size"] == 4 and info["args"]["train"] == 8  # the dry run's caps
    assert info["timed_steps_per_epoch"] == 2
    assert set(info["warmup_last_step_s"]) == set(arms)
    assert info["peft_init_max_abs_diff_vs_softprompt"] == 0.0  # both arms start from the same text-init prompt
    rows = {r["arm"]: r for r in info["results"]}
    assert list(rows) == arms
    for arm, r in rows.items():
        assert r["examples/s"] > 0 and r["ms/step"] > 0 and r["MFU bf16 peak"] > 0, arm
        assert r["peak GiB"] is None  # GPU memory only on CUDA
        assert info["epoch_stats"][arm][0]["examples"] == 8 and info["epoch_stats"][arm][0]["steps"] == 2
    for arm in ("softprompt-plain", "peft", "peft-bf16"):  # one padded forward: computes at least the real tokens
        assert rows[arm]["padded tokens/s"] >= rows[arm]["real tokens/s"]
    # on a CPU `auto` is the prefix tree: the same work as the kv_tree arm, at most the plain path's padded rows
    auto, tree, plain = (info["epoch_stats"][a][0] for a in ("softprompt", "softprompt-kv_tree", "softprompt-plain"))
    assert auto["tokens_padded"] == tree["tokens_padded"] <= plain["tokens_padded"]
    assert auto["tokens_real"] == tree["tokens_real"] and auto["flops"] == tree["flops"]
    assert set(info["accuracy"]) == {"initial (text init)", *arms}
    assert set(info["profile"]) == {"softprompt", "peft"} and "aten::mm" in info["profile"]["softprompt"]
    assert info["speedup_vs_best_peft"] == pytest.approx(
        rows["softprompt"]["examples/s"] / max(rows["peft"]["examples/s"], rows["peft-bf16"]["examples/s"])
    )


def test_train_vs_peft_drops_an_arm_out_of_gpu_memory(bench, carry, tmp_path, monkeypatch):
    """An arm that runs out of GPU memory costs its own numbers, not the whole cell's."""
    real_work = bench["train"].PeftArm.work

    def work(self, ready):
        if self.bf16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_work(self, ready)

    monkeypatch.setattr(bench["train"].PeftArm, "work", work)
    out = tmp_path / "train.json"
    argv = [*_common_args(carry, "smollm2-135m"), "--warmup-steps", "1", "--val", "0", "--json", str(out)]
    bench["train"].main([*argv, "--arms", "softprompt,peft,peft-bf16"])
    info = json.loads(out.read_text())
    assert info["dropped_arms"] == {"peft-bf16": "out of GPU memory at batch 1"}
    assert [r["arm"] for r in info["results"]] == ["softprompt", "peft"]
    assert all(r["examples/s"] > 0 for r in info["results"]) and info["accuracy"] == {}
    assert info["speedup_vs_best_peft"] == pytest.approx(info["speedup_examples_per_s"])


@pytest.mark.parametrize(
    ("shape", "arms"),
    [
        ("smollm2-135m", ["softprompt", "softprompt-plain"]),
        ("bloomz-560m", ["softprompt", "softprompt-kv_tree", "softprompt-padded"]),
    ],
)
def test_eval_vs_naive_dry_run(bench, carry, tmp_path, shape, arms):
    out = tmp_path / "eval.json"
    bench["eval"].main(
        [*_common_args(carry, shape), "--tasks", "rte,sst2", "--arms", ",".join([*arms, "naive"]), "--json", str(out)]
    )
    info = json.loads(out.read_text())
    # every softprompt strategy picks the naive scorer's answer for every example in float32
    assert info["fp32_identical_predictions"] == {f"{t} {a}": True for t in ("rte", "sst2") for a in arms}
    rows = info["results"]
    assert len(rows) == 2 * 2 * (len(arms) + 1)  # tasks x dtypes x arms
    for r in rows:
        assert r["examples"] == 6 and r["examples/s"] > 0 and r["MFU bf16 peak"] > 0
        if r["dtype"] == "float32":
            assert r["max |dlogp| vs naive"] < 1e-4
    naive = [r for r in rows if r["arm"] == "naive"]
    assert all(r["forwards"] == 6 * 2 for r in naive)  # one per (example, choice)
    assert all(r["padded tokens/s"] == r["real tokens/s"] for r in naive)  # batch 1: no padding


def test_gpu_suite_dry_run(bench, carry, tmp_path):
    """THE GPU command on CPU: two cells through bash, budgets, merge and tables; then the projection reads it."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), CARRY=str(carry), PYTHON=sys.executable)
    cells = ["train-bloomz-560m-rte-b8-auto", "eval-smollm2-135m"]
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--cpu-dry-run", *cells],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["cells.log", "gpu_suite.json", "suite.log", "summary.md"]
    merged = json.loads((out / "gpu_suite.json").read_text())
    assert set(merged["cells"]) == set(cells)
    for name, cell in merged["cells"].items():
        assert cell["status"]["state"] == "ok" and cell["status"]["rc"] == 0, name
        assert cell["result"]["args"]["cpu_dry_run"] is True
    # the default arms measure what issue 28 left pending a GPU: softprompt-lm and the answer-only-loss PEFT arm, and
    # the -auto cell trains in the layout `auto` picks for this tokenizer (it has a chat template: chat)
    train = merged["cells"]["train-bloomz-560m-rte-b8-auto"]["result"]
    assert train["args"]["prompt_format"] == "auto" and train["prompt_format"] == "chat"
    arms = [r["arm"] for r in train["results"]]
    assert arms == ["softprompt", "softprompt-grouped", "softprompt-lm", "peft", "peft-bf16", "peft-bf16-grouped"] + [
        "peft-bf16-grouped-answer"
    ]
    summary = (out / "summary.md").read_text()
    assert "| bloomz-560m | rte (chat) | 4 (dry run of b8) |" in summary and "| smollm2-135m | sst2 | float32 |" in summary

    # the projection reads a merged suite JSON (dry-run results only when asked to)
    with pytest.raises(SystemExit, match="no measured rate for shape bloomz-560m"):
        bench["project"].main([str(out / "gpu_suite.json"), "--shape", "bloomz-560m"])


def test_gpu_suite_refuses_without_carry(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), CARRY=str(tmp_path / "nothing"), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--cpu-dry-run"], env=env, capture_output=True, text=True, cwd=BENCH.parent
    )
    assert proc.returncode == 3
    assert "prepare_carry.sh" in proc.stdout + proc.stderr


def test_project_study_time_arithmetic(bench, carry, tmp_path):
    """Known rates and data sizes give the hand-computed wall times, local and as Ray list scheduling."""
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        f"""
[study]
model = "smollm2-135m"
tasks = ["rte", "sst2"]
seeds = [0, 1]
data_dir = "{carry / "data"}"
[train]
epochs = 2
batch_size = 4
[baselines]
methods = ["majority", "no_prompt"]
[analysis]
project = false
transfer = false
"""
    )
    train = {
        t: {"args": {"model": "smollm2-135m", "task": t, "batch_size": 4}, "results": [{"arm": "softprompt", "examples/s": r}]}
        for t, r in (("rte", 4.0), ("sst2", 8.0))
    }
    ev = {
        "args": {"shape": "smollm2-135m", "tasks": "rte,sst2"},
        "results": [{"task": t, "dtype": "bfloat16", "arm": "softprompt", "examples/s": 16.0} for t in ("rte", "sst2")]
        + [{"task": "rte", "dtype": "bfloat16", "arm": "naive", "examples/s": 1.0}],
    }
    files = []
    for name, doc in (("rte", train["rte"]), ("sst2", train["sst2"]), ("eval", ev)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "projection.json"
    bench["project"].main([*map(str, files), "--config", str(cfg), "--gpus", "1,2", "--json", str(out)])
    p = json.loads(out.read_text())
    # 12 training, 8 validation examples per task; a run: 2 epochs x 12 / rate + (2 + 2) passes x 8 / 16
    assert p["units_s"]["run rte-s0"] == pytest.approx(2 * 12 / 4 + 4 * 8 / 16)  # 8 s
    assert p["units_s"]["run sst2-s1"] == pytest.approx(2 * 12 / 8 + 4 * 8 / 16)  # 5 s
    assert p["units_s"]["baseline rte majority"] == 0 and p["units_s"]["baseline sst2 no_prompt"] == pytest.approx(0.5)
    assert p["analyses_s"] == pytest.approx(2 * 2 * 0.5)  # two no-prompt passes per task
    assert p["local_s"] == pytest.approx(2 * 8 + 2 * 5 + 2 * 0.5 + 2)
    # two devices: both rte runs (8 s), then both sst2 runs (to 13 s), then the baselines (to 13.5 s), then analyses
    assert p["ray_s"]["2"] == pytest.approx(13.5 + 2)
    assert p["ray_s"]["1"] == pytest.approx(p["local_s"])


def _peft_arms(bench, carry, answer_only: bool, grouped: bool, prompt_format: str = "plain"):
    from softprompt.tasks import get_task

    m = bench["train"]
    args = m.parse_args([*_common_args(carry, "smollm2-135m"), "--task", "rte", "--prompt-format", prompt_format])
    task = get_task("rte")
    examples = task.load("train", args.data_dir, limit=args.train, seed=args.seed)
    device = torch.device("cpu")
    return m.PeftArm(task, examples, args, False, None, device, grouped=grouped, answer_only=answer_only), examples


@pytest.mark.parametrize("grouped", [False, True])
def test_peft_answer_only_loss_is_the_recipes_loss(bench, carry, grouped):
    """The answer-only PEFT arm computes the same loss and prompt gradient as PEFT's recipe (float32), with the LM
    head at a few positions per row instead of every one."""
    full, examples = _peft_arms(bench, carry, answer_only=False, grouped=grouped)
    answer, _ = _peft_arms(bench, carry, answer_only=True, grouped=grouped)
    assert answer.name == ("peft-grouped-answer" if grouped else "peft-answer")
    idx = full.order(len(examples), 0, 0)[:4]
    losses, grads = [], []
    for arm in (full, answer):
        loss = arm.loss(arm.prepare(idx))
        loss.backward()
        emb = arm.model.prompt_encoder["default"].embedding.weight
        losses.append(float(loss))
        grads.append(emb.grad.detach().clone())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    for arm in (full, answer):
        arm.count([idx], None)
    assert answer.stats["flops"] < full.stats["flops"]  # the head at the kept positions only
    assert answer.stats["tokens_real"] == full.stats["tokens_real"]


def test_prompt_format_auto_gives_both_tools_the_chat_layout(bench, carry, tmp_path):
    """--prompt-format auto resolves like `softprompt train` (chat for a tokenizer with a chat template), and PEFT's
    arm then sees exactly softprompt's text: the same prefix ids and answer ids."""
    from softprompt.data.batching import encode_examples

    arm, examples = _peft_arms(bench, carry, answer_only=False, grouped=False, prompt_format="auto")
    tok = arm.bb.tokenizer
    assert arm.fmt == "chat"
    for ex in examples:
        inp, answer = bench["train"].peft_text_ids(tok, ex, "chat")
        enc = encode_examples([ex], tok, prompt_format="chat")[0]
        row = next(r for r in enc.rows if any(k == ex.label for _, _, k in r.targets))
        first = min(p for p, _, k in row.targets if k == ex.label)
        assert inp == row.ids[: first + 1]
        assert answer == [t for _, t, k in row.targets if k == ex.label]
    plain = bench["train"].peft_max_length(tok, examples, "plain")
    assert arm.max_length > plain  # the chat template's tokens
    out = tmp_path / "train.json"
    argv = [*_common_args(carry, "smollm2-135m"), "--prompt-format", "auto", "--val", "4", "--warmup-steps", "1"]
    bench["train"].main([*argv, "--arms", "softprompt,peft-bf16-answer", "--json", str(out)])
    info = json.loads(out.read_text())
    assert info["prompt_format"] == "chat" and info["peft_max_length"] == arm.max_length
    assert info["peft_init_max_abs_diff_vs_softprompt"] == 0.0
    assert [r["arm"] for r in info["results"]] == ["softprompt", "peft-bf16-answer"]


def test_gpu_tables_reproduce_the_published_ratios_from_the_committed_json(bench):
    """Every ratio bench/README.md's GPU section publishes comes out of gpu_tables from bench/results, naming the PEFT
    arm it divides by, with the fair PEFT arm (peft-bf16-grouped) in the target and total times next to medians."""
    results = BENCH / "results"

    def ratios(name: str, cell: str) -> dict:
        res = json.loads((results / name).read_text())["cells"][cell]["result"]
        return bench["tables"].ratios(res)

    r = ratios("gpu_suite_h100_buckets_run1.json", "train-bloomz-560m-rte-b32")
    assert r["median"] == "2.46x (peft-bf16-grouped)"  # 3.53x against PEFT's recipe alone, as once published
    assert r["grouped"] == "4.40x" and r["total"] == "0.64x (peft-bf16-grouped)"
    r = ratios("gpu_suite_h100_buckets_run3.json", "train-smollm2-135m-rte-b32")
    assert r["median"] == "3.00x (peft-bf16)" and r["timed"] == "2.54x (peft-bf16)"  # 5 epochs: medians vs sums
    r = ratios("gpu_suite_h100_buckets_run1.json", "train-bloomz-560m-sst2-b32")
    assert r["median"] == "2.86x (peft-bf16)"
    r = ratios("gpu_suite_h100_graphs_run3.json", "train-smollm2-135m-rte-b8")
    assert r["best"] == "6.54x (softprompt-graphs-lowp / peft)"
    assert ratios("gpu_suite_h100.json", "train-bloomz-560m-rte-b32")["total"] == "-"  # its warm-up was not recorded
    runs = [(p.stem, json.loads(p.read_text())) for p in sorted(results.glob("gpu_suite_h100_buckets_run*.json"))]
    table = bench["tables"].train_table(runs)
    assert "| gpu_suite_h100_buckets_run2 | bloomz-560m | rte | 32 | 5 x 8 | 979.1 · 1.47+1.73 s |" in table

"""Hard prompts (`--method hard`, PEZ projected gradients): the projection, the search, the run, the baseline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.step as step_mod
from softprompt.config import TrainConfig
from softprompt.data.batching import encode_examples
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import init_prompt, input_embedding_matrix
from softprompt.model.reparam import hard_prompt_encoder, hard_prompt_facts, special_token_ids
from softprompt.records.results import RunsAndBaselines
from softprompt.report.tables import accuracy_rows, method_label
from softprompt.runs.baselines import baseline_config, check_methods
from softprompt.runs.directory import load_run
from softprompt.scoring import choice_scores
from softprompt.tasks import get_task
from softprompt.training import train
from softprompt.training.baseline_runs import run_baselines
from tests.conftest import tiny_config


def _vocabulary(backbone):
    """(E, the ids a hard prompt may use): every row the model sees, special tokens left out."""
    tok = backbone.tokenizer
    special = special_token_ids(tok)
    return input_embedding_matrix(backbone.model, n_tokens=len(tok)), [i for i in range(len(tok)) if i not in special]


def test_projection_feeds_exact_token_rows_and_passes_the_gradient_to_p(tiny_llama):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    prompt = init_prompt(model, tok, 5, "random", seed=3)  # P between tokens: the projection must move it
    encoder = hard_prompt_encoder(prompt, model, tok)
    E, allowed = _vocabulary(tiny_llama)
    out = encoder()
    ids = encoder.ids()
    assert torch.equal(out, E[ids])  # exactly the token rows, not P + (rows - P) rounded
    assert not torch.equal(out, prompt.weight)
    cosine = torch.nn.functional.normalize(prompt.weight.detach(), dim=1) @ torch.nn.functional.normalize(E[allowed], dim=1).T
    assert ids == [allowed[i] for i in cosine.argmax(dim=1).tolist()]  # nearest by cosine, special tokens excluded
    assert not set(ids) & special_token_ids(tok)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    assert torch.equal(prompt.weight.grad, w)  # straight through: d loss / d P = d loss / d rows
    assert list(encoder.named_trainables()) == ["prompt"]


def test_training_scores_only_token_rows_and_saves_them(tiny_llama, toy_data, tmp_path, monkeypatch):
    E, _ = _vocabulary(tiny_llama)
    seen = []
    real = step_mod.batch_choice_scores

    def recording(model, prompt, batch, **kw):
        seen.append(prompt.detach().clone())
        return real(model, prompt, batch, **kw)

    monkeypatch.setattr(step_mod, "batch_choice_scores", recording)
    cfg = tiny_config(toy_data, method="hard", init="random", epochs=2, lr=0.05)
    res = train(cfg, tmp_path / "run", backbone=tiny_llama, progress=False)
    assert len(seen) == 6  # 12 examples, batches of 4, two epochs
    for matrix in seen:
        rows = (matrix[:, None, :] == E[None]).all(-1)  # which vocabulary rows each prompt row equals
        assert rows.any(-1).all(), "a scored prompt row is not a token embedding"
    saved = load_file(str(tmp_path / "run" / "prompt.safetensors"))
    ids = res.hard_prompt.last.token_ids
    assert torch.equal(saved["prompt"], E[ids])  # the saved prompt is the projected one, not P
    assert torch.equal(saved["initial_prompt"], seen[0])  # drift is measured from the tokens training started on
    checkpointed = load_run(tmp_path / "run").prompt()
    assert torch.equal(checkpointed.weight, E[ids])


def _steering_task(backbone, tmp_path):
    """A task a single token decides: eight inputs labelled by what the model predicts, between " good" and
    " dog", with the token t* that pushes hardest towards " good" as a one-token prompt. Returns (task file,
    t*, every token whose one-token prompt gets all eight right)."""
    tok = backbone.tokenizer
    rng = random.Random(0)
    words = [
        "cat",
        "dog",
        "mat",
        "movie",
        "review",
        "good",
        "bad",
        "charming",
        "boring",
        "quickly",
        "away",
        "premise",
        "hypothesis",
    ]
    texts = [f"The {a} sat on the {b}." for a, b in (rng.sample(words, 2) for _ in range(8))]
    E, allowed = _vocabulary(backbone)

    def write(labels: list[str]):
        rows = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True))
        (tmp_path / "train.jsonl").write_text(rows * 5)  # 8 rows to train on, 32 held out as the dev split
        (tmp_path / "validation.jsonl").write_text(rows)
        (tmp_path / "task.toml").write_text(
            'name = "steer"\ndescription = "Answer."\ntemplate = "{text}\\nAnswer:"\nlabel_words = ["good", "dog"]\n'
            'label_values = ["a", "b"]\n[data]\ntrain = "train.jsonl"\nvalidation = "validation.jsonl"\n'
        )
        return get_task(str(tmp_path / "task.toml"))

    task = write(["a"] * 8)
    enc = encode_examples(task.load("validation"), tok, n_prompt=1, max_length=64)
    margins = {}
    for v in allowed:
        scores = choice_scores(backbone.model, enc, E[v : v + 1], pad_id=0, compute_dtype=torch.float32)
        margins[v] = torch.tensor([lp[0] - lp[1] for lp in scores.logprobs])
    t_star = max(margins, key=lambda v: float(margins[v].mean()))
    labels = (margins[t_star] < 0).long()
    write(["a" if y == 0 else "b" for y in labels.tolist()])
    winners = [v for v, m in margins.items() if torch.equal((m < 0).long(), labels)]
    return tmp_path / "task.toml", t_star, winners


def test_pez_finds_the_one_token_that_decides_the_task(tiny_llama, tmp_path):
    task_file, t_star, winners = _steering_task(tiny_llama, tmp_path)
    assert t_star in winners and len(winners) <= 3  # few of the 398 tokens get every example right
    start = "Answer"  # far from t*: most tokens are nearer to it by cosine
    E, allowed = _vocabulary(tiny_llama)
    En = torch.nn.functional.normalize(E, dim=1)
    start_id = tiny_llama.tokenizer(start, add_special_tokens=False)["input_ids"][0]
    assert start_id not in winners and float(En[start_id] @ En[t_star]) < torch.quantile(En[allowed] @ En[t_star], 0.75)
    cfg = TrainConfig(task=str(task_file), model="tiny", method="hard", tokens=1, init="text", init_text=start, epochs=20,
                      batch_size=8, lr=0.1, dev_size=32, compute_dtype="float32", max_length=64)  # fmt: skip
    res = train(cfg, tmp_path / "run", backbone=tiny_llama, progress=False, baselines=False)
    best = res.hard_prompt.best.token_ids
    assert res.best["validation"] == 1.0 and best[0] in winners
    if len(winners) == 1:
        assert best == [t_star]
    # where it ends (the learning rate decays to 0): the last prompt is that token too
    assert res.final.accuracy == 1.0 and res.hard_prompt.last.token_ids[0] in winners
    assert res.history[0]["accuracy"] < 1.0  # one step from the start token was not enough: it searched


def test_cli_train_hard_writes_the_prompt_and_resumes_identically(tmp_path, tiny_model_dir, toy_data, interrupt_at, capsys):
    from softprompt.cli import main

    argv = ["train", "--model", str(tiny_model_dir), "--task", "rte", "--data-dir", str(toy_data), "--method", "hard",
            "--epochs", "3", "--batch-size", "2", "--tokens", "3", "--lr", "0.05", "--compute-dtype", "float32",
            "--max-length", "128", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    printed = capsys.readouterr().out
    ref = json.loads((tmp_path / "ref" / "hard_prompt.json").read_text())
    run = load_run(tmp_path / "ref")
    assert run.record.hard_prompt.to_dict() == ref and run.record.resolved.lr == 0.05
    last = ref["last"]
    assert len(last["token_ids"]) == 3 and len(last["tokens"]) == 3 and isinstance(last["retokenizes_to_same_ids"], bool)
    assert last == hard_prompt_facts(last["token_ids"], run_tokenizer(tiny_model_dir))
    assert set(ref["text_final"]) >= {"accuracy", "f1_macro", "n"} and ref["text_final"]["n"] == 4
    assert "hard (PEZ token rows, last)" in printed and "hard, its text typed" in printed and repr(last["text"]) in printed
    assert set(run.record.baselines) == {"no_prompt", "english_prompt"}

    interrupt_at(5)
    assert main([*argv, "--out", str(tmp_path / "cut")]) == 130
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    interrupt_at(None)
    assert main([*argv, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    got = load_file(str(tmp_path / "cut" / "prompt.safetensors"))
    assert torch.equal(got["prompt"], load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"])
    assert json.loads((tmp_path / "cut" / "hard_prompt.json").read_text()) == ref


def run_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_hard_baseline_row_carries_its_text(tiny_llama, toy_data, tmp_path, monkeypatch, capsys):
    import softprompt.training.baseline_runs as baseline_runs_mod
    from softprompt.cli import main

    monkeypatch.setattr(baseline_runs_mod, "load_backbone", lambda *a, **k: tiny_llama)
    argv = ["baselines", "--task", "rte", "--model", "tiny", "--methods", "no_prompt", "hard", "--tokens", "3",
            "--epochs", "1", "--batch-size", "4", "--data-dir", str(toy_data), "--compute-dtype", "float32",
            "--hard-lr", "0.05", "--out", str(tmp_path / "b"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "b" / "baselines.json").read_text())["rows"]
    hard = rows[1]
    run = load_run(tmp_path / "b" / "hard")
    assert run.method == "hard" and run.config["tokens"] == 3 and run.config["lr"] == 0.05
    assert hard["method"] == "hard" and hard["hard_prompt"] == run.record.hard_prompt.last.text
    assert hard["accuracy"] == run.record.final.accuracy and hard["trainable_parameters"] == 3 * 32
    assert hard["text_accuracy"] == run.record.hard_prompt.text_final.accuracy
    assert repr(hard["hard_prompt"]) in out and "hard" in out.split("hard prompt (accuracy")[0]
    # the study report's accuracy table: the token rows' row and the typed text's row, both naming the text
    results = {"runs": [], "baselines": {"rte": {"hard": hard}}}
    results["runs"] = [
        {"name": "rte-s0", "task": "rte", "final": {"accuracy": 0.5, "f1_macro": 0.5}, "parameters": {"trainable": 96}}
    ]
    table = [r for r in accuracy_rows(RunsAndBaselines.from_dict(results)) if r["method"].startswith("hard")]
    assert [r["method"] for r in table] == ["hard", "hard_text"]
    assert table[0]["accuracy"] == hard["accuracy"] and table[1]["accuracy"] == hard["text_accuracy"]
    assert all(hard["hard_prompt"].replace("\n", "\\n") in method_label(r) for r in table)


def test_hard_is_a_named_baseline_not_a_default_one(toy_data):
    from softprompt.runs.baselines import METHODS

    assert "hard" not in METHODS and check_methods(["hard"]) == ["hard"]
    study_cfg = tiny_config(toy_data, init="task:cb", reparam="mlp", lr=0.3)
    hard = baseline_config(study_cfg, "hard")
    assert (hard.method, hard.init, hard.reparam, hard.lr, hard.tokens) == ("hard", "text", "none", None, 3)
    # its row is the last prompt: no selection, no curve (an override sets either back); the same training subsample
    study_cfg = tiny_config(toy_data, dev_size=40, eval_every=10, selection="dev_loss")
    hard = baseline_config(study_cfg, "hard")
    assert (hard.selection, hard.eval_every, hard.dev_size) == ("last", 0, 40)
    assert baseline_config(study_cfg, "hard", {"eval_every": 5}).eval_every == 5
    assert baseline_config(study_cfg, "lora").selection == "dev_loss"  # other baselines as before
    assert baseline_config(tiny_config(toy_data, init="vocab"), "hard").init == "vocab"
    with pytest.raises(SoftPromptError, match="reparam 'mlp' applies to method 'prompt' only"):
        TrainConfig(method="hard", reparam="mlp")


def test_study_config_lists_hard_among_its_baselines(tmp_path, toy_data):
    from softprompt.study.config import load_study_config

    path = tmp_path / "study.toml"
    path.write_text(
        f'[study]\ntasks = ["rte"]\nseeds = [0]\ndata_dir = "{toy_data}"\n[baselines]\nmethods = ["majority", "hard"]\n'
        "hard = {lr = 0.2}\n"
    )
    cfg = load_study_config(path)
    assert cfg.baselines.methods == ["majority", "hard"] and cfg.baselines.overrides()["hard"] == {"lr": 0.2}
    path.write_text(path.read_text().replace('"hard"]', '"hardd"]'))
    with pytest.raises(SoftPromptError, match=r"\[baselines\] methods: unknown \['hardd'\]"):
        load_study_config(path)


def test_hard_baseline_trains_on_the_shared_backbone(tiny_llama, toy_data, tmp_path):
    cfg = tiny_config(toy_data, tokens=2)
    before = {n: p.clone() for n, p in tiny_llama.model.named_parameters()}
    rows = run_baselines(cfg, tmp_path / "b", methods=["hard"], backbone=tiny_llama,
                         backbone_factory=lambda: pytest.fail("copied the model for a hard prompt"))  # fmt: skip
    assert rows[0]["method"] == "hard" and 0 <= rows[0]["accuracy"] <= 1
    for n, p in tiny_llama.model.named_parameters():
        assert torch.equal(p, before[n]) and not p.requires_grad, n
    again = run_baselines(cfg, tmp_path / "b", methods=["hard"], backbone=tiny_llama)
    assert again[0]["reused"] and again[0]["hard_prompt"] == rows[0]["hard_prompt"]


def test_a_hard_baseline_scores_only_what_its_row_reports(tiny_llama, toy_data, tmp_path):
    """The work of a hard baseline on a config with a dev split and curve points: its validation subsample at the epoch
    end (the row's accuracy and calibrated accuracy) and its text typed (the text row), never the dev split or a
    curve point. Counted in scorings (examples scored): the config's soft prompt run would also score 3 curve points
    and 3 dev evaluations."""
    from softprompt.evaluate import Evaluator

    cfg = tiny_config(toy_data, tokens=2, dev_size=4, eval_every=1, selection="dev_loss")
    scored: list[tuple[str, int]] = []
    real = Evaluator._scores

    def counting(self, task, examples, prompt, hard_prompt, split, key):
        scored.append((split, len(examples)))
        return real(self, task, examples, prompt, hard_prompt, split, key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Evaluator, "_scores", counting)
        rows = run_baselines(cfg, tmp_path / "b", methods=["hard"], backbone=tiny_llama)
    from softprompt.records.history import read_metrics

    run = load_run(Path(rows[0]["run"]))
    history = read_metrics(run.path)
    assert len(history) == 1 and "dev" not in history[0]  # one epoch end, no curve point, no dev split
    # the epoch end (validation + its content-free calibration), then the typed text: 4 + 3 + 4 examples
    assert scored == [("validation", 4), ("content-free", 3), ("validation", 4)]
    assert rows[0]["accuracy"] == run.record.final.accuracy and run.record.selection.applied == "last"
    assert run.record.train_examples == 8  # the dev split is still held out of training


def test_a_study_lists_hard_and_its_report_shows_the_text(tmp_path, tiny_model_dir, toy_data):
    import html

    from softprompt.study import run_study

    path = tmp_path / "study.toml"
    path.write_text(
        f'[study]\nname = "tiny"\nmodel = "{tiny_model_dir}"\ntasks = ["rte"]\nseeds = [0]\ndata_dir = "{toy_data}"\n'
        '[train]\ntokens = 3\nepochs = 1\nbatch_size = 4\nlr = 0.1\ncompute_dtype = "float32"\nmax_length = 128\n'
        '[baselines]\nmethods = ["no_prompt", "hard"]\nhard = {lr = 0.05}\n'
        "[analysis]\nk = 3\ntransfer = false\nimportance = false\ndescribe = false\n"
    )
    results = run_study(path, tmp_path / "study", progress=False)
    hard = results["baselines"]["rte"]["hard"]
    run = load_run(Path(hard["run"]))
    assert run.method == "hard" and run.config["lr"] == 0.05 and run.config["tokens"] == 3
    assert hard["hard_prompt"] == run.record.hard_prompt.last.text
    page = (tmp_path / "study" / "report.html").read_text()
    label = method_label({"method": "hard", "prompt_text": hard["hard_prompt"]})
    assert html.escape(label, quote=False) in page or html.escape(label) in page
    csv = (tmp_path / "study" / "tables" / "accuracy.csv").read_text()
    assert ",hard," in csv and ",hard_text," in csv

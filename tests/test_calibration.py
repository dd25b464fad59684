"""Content-free calibration (Zhao et al. 2021): the prior over the label words, the calibrated metrics, where it
does not apply, and where it is shown (eval --calibrate, baselines, the report's accuracy table and findings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sklearn.metrics import f1_score

from softprompt.evaluate import (
    CONTENT_FREE,
    Evaluator,
    calibrated_metrics,
    calibrated_predictions,
    content_free_examples,
)
from softprompt.records.results import RunsAndBaselines
from softprompt.report.findings import accuracy_findings
from softprompt.report.tables import accuracy_rows
from softprompt.runs.baselines import baseline_row
from softprompt.scoring import Scores
from softprompt.tasks import get_task
from softprompt.tasks.custom import load_task_file

# ----------------------------------------------------------------------------- helpers


def _loglik(backbone, context: str, choice: str, *, prompt: torch.Tensor | None = None, hard: str | None = None) -> float:
    """The summed log-likelihood of `choice` after [soft prompt] [hard prompt + newline] context, by the model's
    own forward on one unpadded row (no scorer code)."""
    tok, model = backbone.tokenizer, backbone.model
    prefix = tok((hard + "\n") if hard else "", add_special_tokens=False)["input_ids"]
    prefix = prefix + tok(context, add_special_tokens=False)["input_ids"]
    answer = tok(choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + answer])
    embeds = model.get_input_embeddings()(ids)
    n = 0
    if prompt is not None:
        embeds, n = torch.cat([prompt[None].to(embeds.dtype), embeds], 1), prompt.shape[0]
    with torch.no_grad():
        logp = model(inputs_embeds=embeds).logits[0].double().log_softmax(-1)
    return sum(float(logp[n + len(prefix) - 1 + j, t]) for j, t in enumerate(answer))


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _topic_task(tmp_path: Path) -> Path:
    """A custom task with two renamed fields and a label word of several tokens (the tiny tokenizer never saw it)."""
    rows = [
        {"first": "The cat sat on the mat.", "second": "a movie", "y": "True"},
        {"first": "A boring movie.", "second": "the dog ran", "y": "zebra crossing"},
        {"first": "A charming movie.", "second": "good", "y": "True"},
        {"first": "The dog ran away quickly.", "second": "bad", "y": "zebra crossing"},
    ]
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "pairs.toml"
    path.write_text(
        'name = "pairs"\ndescription = "Is it true?"\ntemplate = "A: {a}\\nB: {b}\\nAnswer:"\n'
        'label_words = ["True", "zebra crossing"]\nlabel_field = "y"\n'
        '[data]\ntrain = "train.jsonl"\nvalidation = "val.jsonl"\n[fields]\na = "first"\nb = "second"\n'
    )
    return path


# ----------------------------------------------------------------------------- the computation


@pytest.mark.parametrize("kind", ["none", "hard", "soft"])
def test_calibrated_score_equals_a_hand_computation(tiny_llama, toy_data, kind):
    task = get_task("rte")
    ev = Evaluator(tiny_llama, data_dir=toy_data, max_length=128, compute_dtype=torch.float32)
    torch.manual_seed(1)
    prompt = torch.randn(3, 32) * 0.5 if kind == "soft" else None
    hard = "Answer True or False." if kind == "hard" else None
    res = ev.evaluate(task, prompt, hard_prompt=hard, calibrate=True)

    words = [" True", " False"]
    # the content-free input in every field of RTE's template ({premise} and {hypothesis}), the same prompt before it
    contexts = [task.template.format(premise=s, hypothesis=s) for s in CONTENT_FREE]
    probs = [_softmax([_loglik(tiny_llama, c, w, prompt=prompt, hard=hard) for w in words]) for c in contexts]
    prior = [sum(p[k] for p in probs) / len(probs) for k in range(2)]
    assert res.calibrated["prior"] == pytest.approx(prior, abs=1e-5)
    assert res.calibrated["content_free"] == ["N/A", "", "[MASK]"]

    examples = task.load("validation", toy_data)
    preds, labels = [], []
    for ex in examples:
        p = _softmax([_loglik(tiny_llama, ex.context, w, prompt=prompt, hard=hard) for w in words])
        preds.append(max(range(2), key=lambda k, p=p: p[k] / prior[k]))
        labels.append(ex.label)
    assert res.calibrated["accuracy"] == pytest.approx(sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels))
    assert res.calibrated["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro", labels=[0, 1], zero_division=0))
    assert res.metrics()["calibrated"] == res.calibrated  # what run.json's final and baseline rows carry


def test_multi_token_label_words_and_renamed_fields_are_calibrated_whole(tiny_llama, tmp_path):
    task = load_task_file(_topic_task(tmp_path))
    words = [" True", " zebra crossing"]
    assert len(tiny_llama.tokenizer(words[1], add_special_tokens=False)["input_ids"]) > 1
    examples, note = content_free_examples(task)
    assert note is None and [e.context for e in examples] == [f"A: {s}\nB: {s}\nAnswer:" for s in CONTENT_FREE]
    res = Evaluator(tiny_llama, max_length=128, compute_dtype=torch.float32).evaluate(task, None, calibrate=True)
    probs = [_softmax([_loglik(tiny_llama, e.context, w) for w in words]) for e in examples]
    assert res.calibrated["prior"] == pytest.approx([sum(p[k] for p in probs) / 3 for k in range(2)], abs=1e-5)


def test_a_skewed_prior_changes_the_prediction():
    task = get_task("sst2")
    examples, _ = content_free_examples(task)
    # the model says "negative" 0.6 : 0.4 for a positive example, but says "negative" 0.8 : 0.2 for content-free input
    scores = Scores(logprobs=[[math.log(0.6), math.log(0.4)]], labels=[1], choice_chars=[[9, 9]], truncated=0)
    content_free = Scores(logprobs=[[math.log(0.8), math.log(0.2)]] * 3, labels=[0] * 3, choice_chars=[[9, 9]] * 3, truncated=0)
    assert scores.predictions == [0]
    assert calibrated_predictions(scores.logprobs, [0.8, 0.2]) == [1]  # 0.6 / 0.8 < 0.4 / 0.2
    got = calibrated_metrics(task, scores, content_free, examples)
    assert got["accuracy"] == 1.0 and got["prior"] == pytest.approx([0.8, 0.2])
    # an unnormalised pair of log-likelihoods (label words of different lengths) gives the same prior once normalised
    shifted = Scores(
        logprobs=[[math.log(0.8) - 5, math.log(0.2) - 5]] * 3, labels=[0] * 3, choice_chars=[[9, 9]] * 3, truncated=0
    )
    assert calibrated_metrics(task, scores, shifted, examples)["prior"] == pytest.approx([0.8, 0.2])
    # a flat prior leaves the raw prediction
    assert calibrated_predictions(scores.logprobs, [0.5, 0.5]) == [0]


def test_per_example_choices_are_skipped_with_a_note(tiny_llama, tmp_path):
    examples, note = content_free_examples(get_task("copa"))
    assert examples == [] and "differ per example" in note
    examples, note = content_free_examples(get_task("wsc"))
    assert examples == [] and "built by code" in note
    d = tmp_path / "data" / "copa"
    d.mkdir(parents=True)
    rec = {"premise": "The dog ran away.", "choice1": "It was scared.", "choice2": "It was good.", "question": "cause"}
    (d / "val.jsonl").write_text("".join(json.dumps(dict(rec, label=i % 2, idx=i)) + "\n" for i in range(4)))
    res = Evaluator(tiny_llama, data_dir=tmp_path / "data", max_length=128).evaluate("copa", calibrate=True)
    assert res.n == 4 and set(res.calibrated) == {"skipped"} and "differ per example" in res.calibrated["skipped"]
    row = baseline_row("no_prompt", res.metrics(), 0, None)
    assert row["calibrated_accuracy"] is None and "differ per example" in row["calibration_note"]


# ----------------------------------------------------------------------------- where it is shown


def _cli(monkeypatch, tiny_llama, argv: list[str], capsys) -> str:
    import softprompt.model.backbones as backbones_mod
    import softprompt.training.baseline_runs as baseline_runs_mod
    from softprompt.cli import main

    monkeypatch.setattr(backbones_mod, "load_backbone", lambda *a, **k: tiny_llama)
    monkeypatch.setattr(baseline_runs_mod, "load_backbone", lambda *a, **k: tiny_llama)
    assert main(argv) == 0
    return capsys.readouterr().out


def test_cli_eval_calibrate_adds_columns(tiny_llama, toy_data, monkeypatch, capsys):
    common = ["--task", "rte", "--model", "tiny", "--data-dir", str(toy_data), "--compute-dtype", "float32", "--quiet"]
    out = _cli(monkeypatch, tiny_llama, ["eval", *common, "--no-prompt", "--english", "--calibrate"], capsys)
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("prompt"))
    assert header.split() == ["prompt", "accuracy", "f1_macro", "acc_norm", "calibrated", "accuracy", "calibrated", "f1_macro"]
    ev = Evaluator(tiny_llama, data_dir=toy_data, max_length=512, compute_dtype=torch.float32)
    want = ev.evaluate("rte", None, calibrate=True).calibrated
    row = next(line for line in lines if line.startswith("no prompt"))
    assert row.split()[-2:] == [f"{want['accuracy']:.4f}", f"{want['f1_macro']:.4f}"]
    assert sum("prior over the label words True" in line for line in lines) == 2  # one per prompt
    plain = _cli(monkeypatch, tiny_llama, ["eval", *common, "--no-prompt"], capsys)
    assert "calibrated" not in plain


def test_cli_baselines_show_calibrated_columns(tiny_llama, toy_data, tmp_path, monkeypatch, capsys):
    argv = ["baselines", "--task", "rte", "--model", "tiny", "--methods", "majority", "no_prompt", "english_prompt"]
    argv += ["--data-dir", str(toy_data), "--compute-dtype", "float32", "--out", str(tmp_path / "b"), "--quiet"]
    lines = _cli(monkeypatch, tiny_llama, argv, capsys).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split()[:7] == ["method", "accuracy", "f1_macro", "calibrated", "accuracy", "calibrated", "f1_macro"]
    rows = json.loads((tmp_path / "b" / "baselines.json").read_text())["rows"]
    assert rows[0]["calibrated_accuracy"] is None and lines[header + 2].split()[3:5] == ["-", "-"]  # majority: no model
    for r, line in zip(rows[1:], lines[header + 3 : header + 5], strict=True):
        assert isinstance(r["calibrated_accuracy"], float) and f"{r['calibrated_accuracy']:.4f}" in line


def _results(calibrated_runs: bool) -> RunsAndBaselines:
    def run(seed: int, acc: float) -> dict:
        final = {"accuracy": acc, "f1_macro": acc, "n": 60}
        if calibrated_runs:
            final["calibrated"] = {"accuracy": acc - 0.05, "f1_macro": acc - 0.06}
        return {
            "name": f"sst2-s{seed}",
            "task": "sst2",
            "seed": seed,
            "final": final,
            "parameters": {"trainable": 11520},
            "best": None,
        }

    base = {
        "no_prompt": {"accuracy": 0.5, "f1_macro": 0.4, "calibrated_accuracy": 0.6, "calibrated_f1_macro": 0.58},
        "english_prompt": {"accuracy": 0.55, "f1_macro": 0.5, "calibrated_accuracy": 0.7, "calibrated_f1_macro": 0.69},
        "majority": {"accuracy": 0.5, "f1_macro": 0.33},
    }
    return RunsAndBaselines.from_dict({"runs": [run(0, 0.80), run(1, 0.82), run(2, 0.84)], "baselines": {"sst2": base}})


def test_report_table_has_a_calibrated_column_and_findings_use_the_best_calibrated_baseline():
    rows = {r["method"]: r for r in accuracy_rows(_results(True))}
    assert rows["no_prompt"]["calibrated_accuracy"] == 0.6 and rows["no_prompt"]["accuracy"] == 0.5  # a column, not a replacement
    assert rows["majority"]["calibrated_accuracy"] is None
    assert rows["soft_prompt"]["calibrated_accuracy"] == pytest.approx(0.77)
    text = " ".join(accuracy_findings(_results(True)))
    assert "best calibrated baseline (English prompt (hard), calibrated accuracy 70.0%)" in text
    assert "+12.0 points (n=3, 3/3 seeds above" in text and "calibrated too, the soft prompt scores 77.0%" in text
    old = {r["method"]: r for r in accuracy_rows(_results(False))}  # runs trained before calibration: empty, not invented
    assert old["soft_prompt"]["calibrated_accuracy"] is None
    assert "calibrated too" not in " ".join(accuracy_findings(_results(False)))

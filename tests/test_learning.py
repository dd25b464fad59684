"""The "did it learn?" verdict and findings that do not over-claim (ties, n, standard errors, >= 3 seeds)."""

from __future__ import annotations

import math

import pytest

from softprompt.analysis.learning import chance_loss, learning_verdict
from softprompt.records.results import RunsAndBaselines, RunSummary
from softprompt.report.findings import _plateau_findings, compare


def test_chance_loss_is_the_label_entropy():
    assert chance_loss([50, 50]) == pytest.approx(math.log(2))
    assert chance_loss([90, 10]) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert chance_loss([10, 0, 0]) == 0 and chance_loss([]) is None


def test_plateau_runs_are_called_what_they_are():
    stuck = [{"train_loss": None}, {"train_loss": 0.70}, {"train_loss": 0.68}]
    learned = [{"train_loss": 0.69}, {"train_loss": 0.40}]
    v = learning_verdict(stuck, [8, 8], "choices")
    assert v["learned"] is False and "plateau" in v["text"]
    assert learning_verdict(learned, [8, 8], "choices")["learned"] is True
    assert learning_verdict(learned, [8, 8], "lm")["learned"] is None  # the answer's NLL has no chance level here
    verdicts = [v, learning_verdict(learned, [8, 8], "choices")]
    runs = [
        RunSummary.from_dict({"name": f"s{s}", "task": "sst2", "seed": s, "final": {"accuracy": 0.5}, "learning": verdict})
        for s, verdict in enumerate(verdicts)
    ]
    (text,) = _plateau_findings("sst2", runs)
    assert "1 of 2 runs never left" in text and "seed 0" in text


def test_comparisons_state_n_and_call_ties():
    assert "a tie" in compare([0.60, 0.70, 0.50], 0.58)
    assert "above" in compare([0.80, 0.82, 0.81], 0.60) and "n=3, 3/3 seeds above" in compare([0.80, 0.82, 0.81], 0.60)
    assert "below" in compare([0.40, 0.41, 0.42], 0.60)
    assert "not a finding" in compare([0.9], 0.5)


def _run(task: str, final: float, best: dict | None) -> dict:
    final_metrics = {"accuracy": final, "f1_macro": final - 0.1}
    return {"name": task, "task": task, "final": final_metrics, "best": best, "parameters": {"trainable": 7}}


def test_the_accuracy_table_shows_the_dev_selected_prompt_next_to_the_last():
    from softprompt.report.tables import accuracy_rows

    dev = [{"split": "dev", "metric": "accuracy", "value": 0.9, "validation": v} for v in (0.80, 0.84)]
    cb = [{"split": "dev", "metric": "f1_macro", "value": 0.5, "validation": v} for v in (0.40, 0.50)]
    results = {
        "runs": [_run("sst2", 0.70, dev[0]), _run("sst2", 0.74, dev[1]), _run("cb", 0.6, cb[0]), _run("cb", 0.7, cb[1])],
        "baselines": {},
    }
    rows = {(r["task"], r["method"]): r for r in accuracy_rows(RunsAndBaselines.from_dict(results))}
    assert rows["sst2", "soft_prompt"]["accuracy"] == pytest.approx(0.72)
    assert rows["sst2", "soft_prompt_dev"]["accuracy"] == pytest.approx(0.82)
    assert rows["sst2", "soft_prompt_dev"]["n_runs"] == 2 and rows["sst2", "soft_prompt_dev"]["f1_macro"] is None
    # chosen on macro-F1: the row reports that metric and leaves accuracy empty rather than guessing it
    assert rows["cb", "soft_prompt_dev"]["f1_macro"] == pytest.approx(0.45) and rows["cb", "soft_prompt_dev"]["accuracy"] is None
    # one run without a dev split (its best is its last prompt): no dev-selected row for that task
    results["runs"][1]["best"] = {"split": None, "metric": "accuracy", "value": 0.74}
    rows = {(r["task"], r["method"]) for r in accuracy_rows(RunsAndBaselines.from_dict(results))}
    assert ("sst2", "soft_prompt_dev") not in rows and ("cb", "soft_prompt_dev") in rows


def test_transfer_finding_counts_ties_apart():
    """A transfer that scores exactly no prompt's accuracy is a tie, said as one (not folded into "did not beat")."""
    from softprompt.analysis.results import TransferSummary
    from softprompt.analysis.transfer import share_beating_no_prompt
    from softprompt.report.findings import _transfer_findings

    matrix = {"source_tasks": ["a", "b", "b"], "tasks": ["a", "b"], "gain": [[0.1, 0.0], [0.05, 0.2], [-0.1, 0.3]]}
    share = share_beating_no_prompt(matrix)
    assert (share["transfers"], share["beat_no_prompt"], share["ties"]) == (3, 1, 1)
    summary = TransferSummary(share["share"], 3, [], n_beat=1, n_ties=1)
    (text,) = _transfer_findings(summary)
    assert "33.3% of cross-task transfers (1 of 3; exact ties with it: 1, below it: 1) beat no prompt" in text
    (old,) = _transfer_findings(TransferSummary(0.5, 4, []))  # a summary saved before ties were recorded
    assert "50.0% of cross-task transfers (4) beat" in old

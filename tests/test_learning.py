"""The "did it learn?" verdict and findings that do not over-claim (ties, n, standard errors, >= 3 seeds)."""

from __future__ import annotations

import math

import pytest

from softprompt.learning import chance_loss, learning_verdict
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
    runs = [{"seed": 0, "learning": v}, {"seed": 1, "learning": learning_verdict(learned, [8, 8], "choices")}]
    (text,) = _plateau_findings("sst2", runs)
    assert "1 of 2 runs never left" in text and "seed 0" in text


def test_comparisons_state_n_and_call_ties():
    assert "a tie" in compare([0.60, 0.70, 0.50], 0.58)
    assert "above" in compare([0.80, 0.82, 0.81], 0.60) and "n=3, 3/3 seeds above" in compare([0.80, 0.82, 0.81], 0.60)
    assert "below" in compare([0.40, 0.41, 0.42], 0.60)
    assert "not a finding" in compare([0.9], 0.5)

"""The per-task join of the readouts (analysis.readouts) and the report's "What the prompts say" section and findings,
on hand-built analysis outputs whose truth is known."""

from __future__ import annotations

import pytest

from softprompt.analysis.readouts import mean_se, readouts_summary
from softprompt.records.readouts import ReadoutsSummary
from softprompt.report.readouts import readout_findings, readouts_section


def _typed(summary: dict) -> ReadoutsSummary:
    return ReadoutsSummary.from_dict(summary, "readouts")


def _position(i: int, init_id: int, top1: int, rel: float, toward: str) -> dict:
    return {
        "position": i,
        "initial_id": init_id,
        "initial_token": f"w{init_id}",
        "survived": True,
        "tokens": [{"id": top1, "token": f"w{top1}", "similarity": 0.9}],
        "drift": {"norm": rel, "relative_to_init": rel / 2, "relative_to_gap": rel},
        "displacement_tokens": [{"id": 99, "token": toward, "similarity": 0.3}],
    }


def _neighbors(seeds: int, carrier: int, n_pos: int = 5) -> dict:
    runs = {}
    for s in range(seeds):
        # the carrier moves least (the seed study's claim); position 4 changed its top-1 in seed 0
        positions = [
            _position(i, 10 + i, 50 if (i == 4 and s == 0) else 10 + i, 0.1 if i == carrier else 0.5 + 0.1 * i + 0.01 * s, "good")
            for i in range(n_pos)
        ]
        runs[f"sst2-s{s}"] = {"task": "sst2", "seed": s, "positions": positions}
    return {"runs": runs}


def _importance(seeds: int, carrier: int, n_pos: int = 5) -> dict:
    runs = []
    for s in range(seeds):
        positions = [
            {"index": i, "loss_increase": (0.30 + 0.01 * s) if i == carrier else 0.001 * ((i + s) % 3 - 1), "accuracy_drop": 0.1 if i == carrier else 0.0}
            for i in range(n_pos)
        ]  # fmt: skip
        runs.append({"run": f"sst2-s{s}", "task": "sst2", "seed": s, "n": 60, "positions": positions})
    return {"runs": runs}


def _describe(seeds: int) -> dict:
    runs = []
    for s in range(seeds):
        greedy = {"probe": "embed", "layer": None, "decoding": "greedy", "text": f"classify the movie review {s}"}
        runs.append(
            {
                "run": f"sst2-s{s}",
                "task": "sst2",
                "descriptions": [dict(greedy, score={"score": 0.6 + 0.01 * s})],
                "init": {"descriptions": [dict(greedy, text="is it positive", score={"score": 0.3})]},
                "summary": {
                    "trained_score": 0.6 + 0.01 * s,
                    "init_score": 0.3,
                    "best": dict(greedy, score={"score": 0.6 + 0.01 * s}),
                },
            }
        )
    return {"runs": runs}


def test_mean_se_skips_missing_values():
    assert mean_se([1.0, None, 3.0]) == pytest.approx({"mean": 2.0, "se": 1.0, "n": 2})
    assert mean_se([]) == {"mean": None, "se": None, "n": 0}
    assert mean_se([2.0])["se"] is None


def test_the_carrying_position_is_named_with_its_evidence_and_drift(tmp_path):
    baselines = {"sst2": {"hard": {"accuracy": 0.7, "hard_prompt": "good movie ?", "text_accuracy": 0.65},
                          "english_prompt": {"accuracy": 0.58}}}  # fmt: skip
    summary = readouts_summary(
        _neighbors(3, carrier=2), _importance(3, carrier=2), _describe(3), baselines, {"sst2": [0.7, 0.72, 0.74]}
    )
    e = summary["tasks"]["sst2"]
    assert e["aligned"] and e["carriers"]["clear"] == [2] and e["carriers"]["top"][0] == 2
    row = e["positions"][2]
    assert row["loss_increase"]["mean"] == pytest.approx(0.31) and row["loss_increase"]["n"] == 3
    assert row["kept_top1"] == 3 and e["positions"][4]["kept_top1"] == 2
    assert e["positions"][0]["moved_toward"] == [{"token": "good", "runs": 3}]
    # the carrier moved least: importance and drift are negatively rank-correlated
    assert e["importance_vs_drift"]["spearman_rho"] < 0 and e["importance_vs_drift"]["n"] == 5
    assert e["describe"]["difference"]["mean"] == pytest.approx(0.31) and e["describe"]["best"]["run"] == "sst2-s2"
    assert e["hard"]["soft_accuracy"]["mean"] == pytest.approx(0.72) and e["hard"]["english_accuracy"] == 0.58

    facts = readout_findings(_typed(summary))
    carrier = next(f for f in facts if "carries the most" in f)
    assert "position 2 (w12" in carrier and "3 seeds, n = 60" in carrier and "kept its init token" in carrier
    assert any("training changed what the model says" in f for f in facts)
    assert any('PEZ discrete prompt "good movie ?" scores 0.700' in f for f in facts)

    html = readouts_section(_typed(summary), tmp_path)
    assert "<h3>sst2</h3>" in html and "classify the movie review 0" in html and "good movie ?" in html
    assert (tmp_path / "figures" / "readouts_sst2.png").stat().st_size > 5000
    assert "w12" in (tmp_path / "tables" / "readouts_sst2.csv").read_text()


def test_weak_evidence_is_said_to_be_weak():
    """One seed: no standard error, so no position is claimed to carry the gain."""
    summary = readouts_summary(_neighbors(1, carrier=1), _importance(1, carrier=1))
    e = summary["tasks"]["sst2"]
    assert e["carriers"]["clear"] == [] and e["carriers"]["top"][0] == 1
    (fact,) = [f for f in readout_findings(_typed(summary)) if "ablation" in f]
    assert "evidence for individually important positions is weak" in fact and "position 1" in fact


def test_unaligned_inits_and_missing_readouts():
    nb = _neighbors(2, carrier=0)
    nb["runs"]["sst2-s1"]["positions"][0]["initial_id"] = 77  # another init (random/vocab seed): positions not comparable
    summary = readouts_summary(nb, _importance(2, carrier=0))
    assert summary["tasks"]["sst2"]["aligned"] is False and "positions" not in summary["tasks"]["sst2"]
    assert readouts_summary(None) == {"tasks": {}}
    assert readout_findings(None) == []

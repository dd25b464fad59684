"""bench/project_study_time.py prices a study only with measured rates (issue 28): a missing rate is named and
refused, never invented; a stand-in or proxy is labelled; a complete projection is the hand sum of rate x work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BENCH, bench_importable

RTE = [
    {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
    {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
    {"premise": "A charming movie.", "hypothesis": "The movie is good.", "label": "entailment"},
    {"premise": "A boring movie, it seems.", "hypothesis": "The movie is charming.", "label": "not_entailment"},
]
SST2 = [("a charming movie", 1), ("a boring and bad movie", 0), ("good", 1), ("bad , boring", 0)]
H100 = {"cpu": "Intel(R) Xeon(R) Processor", "gpu": "NVIDIA H100 80GB HBM3", "device": "cuda"}


@pytest.fixture(scope="module")
def project():
    with bench_importable():
        import project_study_time

        yield project_study_time


@pytest.fixture
def study(tmp_path) -> Path:
    """Toy RTE and SST-2 data (12 training, 8 validation examples each) and a study config over both, every baseline
    (finetune and lora included) and both analyses."""
    data = tmp_path / "data"
    (data / "rte").mkdir(parents=True)
    (data / "sst2").mkdir(parents=True)
    for name, rows in (("train.jsonl", RTE * 3), ("val.jsonl", RTE * 2)):
        (data / "rte" / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(rows)))
    for name, rows in (("train.tsv", SST2 * 3), ("dev.tsv", SST2 * 2)):
        (data / "sst2" / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        f"""
[study]
model = "bigscience/bloomz-560m"
tasks = ["rte", "sst2"]
seeds = [0, 1]
data_dir = "{data}"
[train]
epochs = 3
batch_size = 8
[baselines]
methods = ["majority", "no_prompt", "english_prompt", "finetune", "lora"]
[analysis]
project = true
transfer = true
"""
    )
    return cfg


TRAIN_RATES = {"rte": {"softprompt": 12.0, "finetune": 3.0, "lora": 4.0, "peft": 2.0}}
TRAIN_RATES["sst2"] = {"softprompt": 24.0, "finetune": 6.0, "lora": 8.0, "peft": 5.0}
EVAL_RATES = {"rte": 16.0, "sst2": 32.0}


def suite(tmp_path: Path, train: dict, machine: dict = H100, name: str = "suite.json") -> Path:
    """A merged gpu_suite JSON: one training cell per task at batch 8 (plus a b32 cell that must be ignored),
    one evaluation cell (bf16 rows, and float32 rows that must be ignored)."""
    cells = {}
    for task, arms in train.items():
        for batch, scale in ((8, 1.0), (32, 100.0)):
            res = {
                "machine": machine,
                "args": {"model": "smollm2-135m", "shape": "bloomz-560m", "task": task, "batch_size": batch},
                "results": [{"arm": a, "examples/s": r * scale} for a, r in arms.items()],
            }
            cells[f"train-bloomz-560m-{task}-b{batch}"] = {"status": {"rc": 0}, "result": res}
    ev = [{"task": t, "dtype": "bfloat16", "arm": "softprompt", "examples/s": r} for t, r in EVAL_RATES.items()]
    ev += [{"task": t, "dtype": "float32", "arm": "softprompt", "examples/s": 1.0} for t in EVAL_RATES]
    ev += [{"task": "rte", "dtype": "bfloat16", "arm": "naive", "examples/s": 0.5}]
    cells["eval-bloomz-560m"] = {
        "status": {"rc": 0},
        "result": {"machine": machine, "args": {"shape": "bloomz-560m", "tasks": "rte,sst2"}, "results": ev},
    }
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells}))
    return path


def hand_total(train: dict) -> float:
    """The study's seconds by hand: 12 training / 8 validation examples per task, 3 epochs, 2 seeds."""
    total = 0.0
    for task, arms in train.items():
        val = 8 / EVAL_RATES[task]
        total += 2 * (3 * 12 / arms["softprompt"] + (3 + 2) * val)  # two prompt runs
        total += 2 * val  # no_prompt and english_prompt (majority: 0)
        total += 3 * 12 / arms["finetune"] + 3 * val + 3 * 12 / arms["lora"] + 3 * val
        total += 2 * val + 2 * 3 * val + 4 * val  # analyses: no-prompt refs, projections (3 per run), transfer
    return total


def test_a_complete_projection_is_the_hand_sum_of_measured_rates_times_work(project, study, tmp_path):
    out = tmp_path / "p.json"
    rc = project.main([str(suite(tmp_path, TRAIN_RATES)), "--config", str(study), "--gpus", "1,3", "--json", str(out)])
    assert rc == 0
    p = json.loads(out.read_text())
    assert p["complete"] and p["measured_only"] and p["missing"] == [] and p["proxies"] == []
    assert p["local_s"] == pytest.approx(hand_total(TRAIN_RATES))
    assert p["units_s"]["baseline sst2 lora"] == pytest.approx(3 * 12 / 8.0 + 3 * 8 / 32.0)
    assert p["units_s"]["baseline rte finetune"] == pytest.approx(3 * 12 / 3.0 + 3 * 8 / 16.0)
    assert p["ray_s"]["1"] == pytest.approx(p["local_s"])
    assert p["ray_s"]["3"] < p["local_s"]
    # every rate says where it came from: the file, the entry inside it, the arm and the value
    lora = p["rates"]["lora"]["rte"]
    assert lora["how"] == "measured" and lora["examples/s"] == 4.0
    entry = "cells.train-bloomz-560m-rte-b8.result.results[2]"
    assert lora["sources"] == [{"file": str(tmp_path / "suite.json"), "entry": entry, "arm": "lora", "examples/s": 4.0}]
    assert p["rates"]["evaluation"]["sst2"]["sources"][0]["entry"] == "cells.eval-bloomz-560m.result.results[1]"


def test_a_missing_lora_rate_is_named_not_invented(project, study, tmp_path, capsys):
    train = {t: {a: r for a, r in arms.items() if a != "lora"} for t, arms in TRAIN_RATES.items()}
    out = tmp_path / "p.json"
    rc = project.main([str(suite(tmp_path, train)), "--config", str(study), "--json", str(out)])
    assert rc == project.EXIT_INCOMPLETE
    text = capsys.readouterr().out
    assert "INCOMPLETE" in text and "lora on rte: no result of arms" in text and "lora on sst2" in text
    p = json.loads(out.read_text())
    assert not p["complete"] and p["local_s"] is None and p["ray_s"] == {}
    assert {(m["method"], m["task"]) for m in p["missing"]} == {("lora", "rte"), ("lora", "sst2")}
    assert p["rates"]["lora"] == {"rte": None, "sst2": None}
    assert p["units_s"]["baseline rte lora"] is None
    # PEFT's prompt-tuning arm (in the same cells) was NOT taken for LoRA; the priced part is everything but LoRA's training
    lora_training = sum(3 * 12 / TRAIN_RATES[t]["lora"] for t in TRAIN_RATES)
    assert p["priced_s"] == pytest.approx(hand_total(TRAIN_RATES) - lora_training)


def test_a_stand_in_of_the_same_method_is_used_and_labelled(project, study, tmp_path):
    train = {t: {("peft-lora" if a == "lora" else a): r for a, r in arms.items()} for t, arms in TRAIN_RATES.items()}
    out = tmp_path / "p.json"
    assert project.main([str(suite(tmp_path, train)), "--config", str(study), "--json", str(out)]) == 0
    p = json.loads(out.read_text())
    assert p["complete"] and p["local_s"] == pytest.approx(hand_total(TRAIN_RATES))
    assert p["rates"]["lora"]["rte"]["how"] == "stand-in for lora: peft-lora"
    assert p["rates"]["lora"]["rte"]["sources"][0]["arm"] == "peft-lora"


def test_a_proxy_only_on_request_and_labelled(project, study, tmp_path, capsys):
    train = {t: {a: r for a, r in arms.items() if a != "lora"} for t, arms in TRAIN_RATES.items()}
    out = tmp_path / "p.json"
    rc = project.main([str(suite(tmp_path, train)), "--config", str(study), "--proxy", "lora=peft", "--json", str(out)])
    assert rc == 0
    assert "PROXY, priced with another method's measurement on request (--proxy): lora on rte, lora on sst2" in (
        capsys.readouterr().out
    )
    p = json.loads(out.read_text())
    assert p["complete"] and not p["measured_only"] and len(p["proxies"]) == 2
    assert p["rates"]["lora"]["sst2"]["proxy"] and p["rates"]["lora"]["sst2"]["examples/s"] == 5.0
    priced_as_peft = {t: dict(arms, lora=arms["peft"]) for t, arms in TRAIN_RATES.items()}
    assert p["local_s"] == pytest.approx(hand_total(priced_as_peft))


def test_a_task_without_its_own_rate_is_scaled_from_a_measured_one_or_refused(project, study, tmp_path):
    train = {"rte": TRAIN_RATES["rte"]}  # nothing measured on SST-2's training
    path = suite(tmp_path, train)
    out = tmp_path / "p.json"
    assert project.main([str(path), "--config", str(study), "--json", str(out)]) == 0
    r = json.loads(out.read_text())["rates"]["prompt"]["sst2"]
    assert r["how"].startswith("measured on rte, x ") and r["sources"][0]["entry"].startswith("cells.train-bloomz-560m-rte-b8")
    assert r["scaled_from"] == "rte" and r["examples/s"] == pytest.approx(TRAIN_RATES["rte"]["softprompt"] * r["scale"])
    assert project.main([str(path), "--config", str(study), "--no-task-stand-ins", "--json", str(out)]) == 3
    assert json.loads(out.read_text())["rates"]["prompt"]["sst2"] is None


def test_rates_of_two_device_kinds_are_not_mixed(project, study, tmp_path):
    epyc = {"cpu": "AMD EPYC", "cores": 2}
    files = [str(suite(tmp_path, TRAIN_RATES)), str(suite(tmp_path, TRAIN_RATES, machine=epyc, name="cpu.json"))]
    with pytest.raises(SystemExit, match="2 device kinds"):
        project.main([*files, "--config", str(study)])
    out = tmp_path / "p.json"
    assert project.main([*files, "--config", str(study), "--device", "h100", "--json", str(out)]) == 0
    p = json.loads(out.read_text())
    assert p["device"] == "NVIDIA H100 80GB HBM3" and p["local_s"] == pytest.approx(hand_total(TRAIN_RATES))
    assert all(s["file"].endswith("suite.json") for r in p["rates"]["prompt"].values() for s in r["sources"])


def test_the_committed_h100_results_price_no_lora_or_finetune(project, tmp_path, data_dir):
    """The seed study from the committed H100 results: prompts and evaluation measured, LoRA and fine-tuning not."""
    out = tmp_path / "p.json"
    results = BENCH / "results" / "gpu_suite_h100_buckets_run1.json"
    rc = project.main([str(results), "--data-dir", str(data_dir), "--json", str(out)])
    p = json.loads(out.read_text())
    assert rc == 3 and {m["method"] for m in p["missing"]} == {"lora", "finetune"}
    assert p["rates"]["prompt"]["rte"]["examples/s"] == pytest.approx(714.57, abs=0.01)
    assert p["rates"]["prompt"]["rte"]["how"] == "measured"

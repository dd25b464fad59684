"""One schema per concept: TrainConfig's fields are the `train` flags and the study's [train] keys; run.json,
run states and the analyses' report views are typed records that fail loudly on a renamed field."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from softprompt.config import LOSSES, TrainConfig
from softprompt.errors import SoftPromptError


def _parse(*argv):
    from softprompt.cli import build_parser

    return build_parser().parse_args(["train", "--task", "rte", *argv])


def test_every_config_field_is_a_train_flag_with_its_default():
    """Adding a TrainConfig field adds its `softprompt train` flag: one loop over the fields builds them."""
    from softprompt.cli.common import config_fields, config_values

    a = _parse()
    names = [f.name for f in config_fields()]
    assert names == [f.name for f in fields(TrainConfig) if f.name != "extra"]  # `extra` is marked as no flag
    assert config_values(a) == {**{n: getattr(TrainConfig(), n) for n in names}, "task": "rte", "lr": None}
    assert TrainConfig(**config_values(a)) == TrainConfig()
    b = _parse("--lora-alpha", "32", "--group-by-length", "--max-train", "16", "--loss", "lm", "--warmup", "0.1")
    cfg = TrainConfig(**config_values(b))
    assert (cfg.lora_alpha, cfg.group_by_length, cfg.max_train, cfg.loss, cfg.warmup) == (32, True, 16, "lm", 0.1)
    with pytest.raises(SystemExit):
        _parse("--method", "adapter")  # choices come from the field
    assert _parse().cuda_graphs is True and _parse("--no-cuda-graphs").cuda_graphs is False  # on by default: --no-x


def test_loss_names_match_the_losses_the_scorer_implements():
    from softprompt.scoring import LOSSES as IMPLEMENTED

    assert tuple(IMPLEMENTED) == LOSSES


def test_lora_alpha_from_the_cli_reaches_the_adapter(tiny_model_dir, toy_data, tmp_path, capsys):
    """The option users asked for: `--lora-alpha` sets LoRA's scaling (alpha / r) and is recorded with the run."""
    from safetensors.torch import load_file

    from softprompt.cli import main
    from softprompt.runs.directory import load_run

    common = ["train", "--model", str(tiny_model_dir), "--task", "rte", "--data-dir", str(toy_data), "--method", "lora"]
    common += ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--compute-dtype", "float32", "--quiet"]
    assert main([*common, "--lora-alpha", "32", "--out", str(tmp_path / "a32")]) == 0
    assert main([*common, "--out", str(tmp_path / "a16")]) == 0
    assert load_run(tmp_path / "a32").config["lora_alpha"] == 32 and load_run(tmp_path / "a16").config["lora_alpha"] == 16
    a32 = load_file(str(tmp_path / "a32" / "adapter.safetensors"))
    a16 = load_file(str(tmp_path / "a16" / "adapter.safetensors"))
    assert a32.keys() == a16.keys()  # same adapter shapes, trained with another scaling
    assert any(not (a32[k] == a16[k]).all() for k in a32 if "lora_B" in k)


def test_lora_alpha_scales_the_injected_adapter(tiny_llama, toy_data, tmp_path):
    import copy

    from softprompt.training import train

    backbone = copy.deepcopy(tiny_llama)
    cfg = TrainConfig(task="rte", model="tiny", method="lora", lora_r=4, lora_alpha=32, epochs=1, batch_size=4,
                      compute_dtype="float32", data_dir=str(toy_data))  # fmt: skip
    train(cfg, tmp_path / "run", backbone=backbone, progress=False)
    scalings = {m.scaling["default"] for m in backbone.model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scalings == {32 / 4}


STUDY = """
[study]
tasks = ["rte"]
seeds = [3, 4]
data_dir = "data"
max_eval = 5

[train]
tokens = 4
lora_alpha = 4
lr = 0.5

[baselines]
methods = ["majority", "lora"]
lora = {{ lora_alpha = {alpha}, lr = 0.002 }}
"""


def test_study_train_is_a_train_config_and_baselines_replace_it(tmp_path):
    """[train] parses into TrainConfig (lora_alpha settable there), runs fill task/seed, a baseline replaces
    the method, its overrides and the learning rate (the prompt's would wreck fine-tuning)."""
    from softprompt.runs.baselines import baseline_config
    from softprompt.study import load_study_config

    (tmp_path / "study.toml").write_text(STUDY.format(alpha=64))
    cfg = load_study_config(tmp_path / "study.toml")
    assert isinstance(cfg.train, TrainConfig) and cfg.train.lora_alpha == 4 and cfg.train.max_eval == 5
    run = cfg.run_config("rte", 4)
    assert (run.task, run.seed, run.method, run.tokens, run.lr, run.data_dir) == (
        "rte",
        4,
        "prompt",
        4,
        0.5,
        str(tmp_path / "data"),
    )
    lora = baseline_config(cfg.baseline_base("rte"), "lora", cfg.baselines.overrides()["lora"])
    assert (lora.method, lora.seed, lora.lora_alpha, lora.lr, lora.tokens, lora.max_eval) == ("lora", 3, 64, 0.002, 4, 5)
    assert baseline_config(cfg.baseline_base("rte"), "finetune").lr == 2e-5  # the method's default
    good = STUDY.format(alpha=64)
    for bad, match in (
        (good.replace("lora_alpha = 64", "lora_alfa = 64"), r"lora overrides: unknown key\(s\) \['lora_alfa'\]"),
        (good.replace("tokens = 4", "seed = 1"), r"\['seed'\] are set by the study"),
    ):
        (tmp_path / "bad.toml").write_text(bad)
        with pytest.raises(SoftPromptError, match=match):
            load_study_config(tmp_path / "bad.toml")


def test_shipped_study_configs_keep_their_meaning():
    """configs/*.toml load unchanged; their [train] values land in the TrainConfig."""
    from pathlib import Path

    from softprompt.study import load_study_config

    demo = load_study_config(Path(__file__).resolve().parents[1] / "configs" / "demo.toml")
    train = demo.train
    assert (train.tokens, train.max_train, train.max_length, train.dev_size, train.max_eval) == (20, 240, 160, 40, 60)
    assert demo.tasks == ["sst2", "examples/topics/topics.toml"] and demo.seeds == [0, 1, 2]
    sst2, topics = (demo.run_config(t, 0) for t in demo.tasks)
    assert (sst2.epochs, sst2.max_train, topics.epochs, topics.max_train) == (2, 240, 1, 160)  # [train.per_task.topics]
    assert train.lr is None and train.prompt_format == "auto"  # the defaults: lr relative to the embedding scale, chat
    assert demo.train.model == demo.model == "smollm2-135m"
    # bench/demo_baselines_cost.toml prices LoRA and fine-tuning at the demo's budgets: it must keep the demo's tasks and runs
    cost = load_study_config(Path(__file__).resolve().parents[1] / "bench" / "demo_baselines_cost.toml")
    assert cost.tasks == demo.tasks and cost.seeds == [0] and {"lora", "finetune"} <= set(cost.baselines.methods)
    assert [cost.run_config(t, 0) for t in cost.tasks] == [demo.run_config(t, 0) for t in demo.tasks]


def test_run_record_round_trip_and_strictness(tmp_path):
    from softprompt.records.metrics import EvalMetrics
    from softprompt.records.run import RunRecord

    rec = RunRecord(status="complete", config={"task": "rte"}, final=EvalMetrics(accuracy=0.5), processes=1)
    rec.write(tmp_path)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert list(saved) == ["format", "status", "config", "processes", "final"]  # fields that do not apply are left out
    assert RunRecord.read(tmp_path) == rec
    (tmp_path / "run.json").write_text(json.dumps({**saved, "finale": {}}))
    with pytest.raises(SoftPromptError, match=r"unknown key\(s\) \['finale'\]"):
        RunRecord.read(tmp_path)


def test_run_state_absent_complete_resumable_conflict(tmp_path):
    from softprompt.records.run import RunRecord
    from softprompt.runs.state import ABSENT, COMPLETE, CONFLICT, RESUMABLE, run_state

    cfg = TrainConfig(epochs=2)
    assert run_state(tmp_path, cfg).kind == ABSENT
    RunRecord(status="interrupted", config=cfg.to_dict()).write(tmp_path)
    assert run_state(tmp_path, cfg).kind == RESUMABLE
    RunRecord(status="complete", config=cfg.to_dict()).write(tmp_path)
    assert run_state(tmp_path, cfg).kind == COMPLETE
    state = run_state(tmp_path, TrainConfig(epochs=3))
    assert (state.kind, state.changed, state.status) == (CONFLICT, ("epochs",), "complete")


def test_report_views_fail_loudly_on_a_renamed_field():
    """A renamed key in an analysis result is an error naming it, not an empty table."""
    from softprompt.analysis.results import GeometryResult

    summary = {
        "task_drift": [{"task": "rte", "runs": 2, "mean_frobenius": 1.0, "std_frobenius": 0.1}],
        "equidistance": [],
        "drift_vs_difficulty": {"against": "no-prompt accuracy", "spearman_r": None, "spearman_p": None, "n": 1},
    }
    geo = {"note": "", "figures": {}, "runs": [], "summary": summary}
    assert GeometryResult.from_json(geo).summary.task_drift[0].mean_frobenius == 1.0
    renamed = {**geo, "summary": {**summary, "task_drifts": summary["task_drift"]}}
    del renamed["summary"]["task_drift"]
    with pytest.raises(SoftPromptError, match="no field 'task_drift'"):
        GeometryResult.from_json(renamed, "results.json geometry")


def test_eval_result_metrics_is_the_one_dict():
    from softprompt.evaluate import EvalResult

    r = EvalResult("rte", "validation", 0.5, 0.4, 0.6, 10, 1, [0, 1])
    assert r.metrics() == {"accuracy": 0.5, "f1_macro": 0.4, "acc_norm": 0.6, "n": 10, "truncated": 1}


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]])
def test_train_trust_remote_code_reaches_the_model_loader(toy_data, tmp_path, monkeypatch, flag):
    """`softprompt train --trust-remote-code` is passed to the loader (it used to be accepted and ignored); off by default."""
    import softprompt.training.data as train_data_mod
    from softprompt.cli import main

    seen = {}

    def loader(name, **kw):
        seen.update(kw)
        raise SoftPromptError("stop after the loader")

    monkeypatch.setattr(train_data_mod, "load_backbone", loader)
    argv = ["train", "--model", "some/hub-model", "--task", "rte", "--data-dir", str(toy_data), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet", *flag]) != 0
    assert seen["trust_remote_code"] is bool(flag)

"""The whole study pipeline on a tiny model in seconds: runs, baselines, analyses, report; skip and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from softprompt.errors import SoftPromptError
from softprompt.study import load_study_config, run_study

CONFIG = """
[study]
name = "tiny"
model = "{model}"
tasks = ["rte"]
seeds = [0, 1, 2]
data_dir = "{data}"

[train]
tokens = 3
epochs = 2
batch_size = 4
lr = 0.1
compute_dtype = "float32"
max_length = 128

[baselines]
methods = {methods}

[analysis]
k = 3
"""


def _write(tmp_path, model_dir, data, methods='["majority", "no_prompt", "english_prompt", "finetune", "lora"]', **extra):
    text = CONFIG.format(model=model_dir, data=data, methods=methods)
    for k, v in extra.items():
        text = text.replace(f"{k} = ", f"{k} = {v}  # was ", 1) if f"{k} = " in text else text
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


def test_whole_study_on_tiny_model(tmp_path, tiny_model_dir, toy_data):
    cfg = _write(tmp_path, tiny_model_dir, toy_data)
    out = tmp_path / "study"
    results = run_study(cfg, out, progress=False)
    assert len(results["runs"]) == 3
    assert set(results["baselines"]["rte"]) == {"majority", "no_prompt", "english_prompt", "finetune", "lora"}
    for key in ("neighbors", "geometry", "transfer"):
        assert results[key]["summary"], key
    # the readouts past nearest tokens: importance and self-description per run, joined per task position by position
    assert [len(r["positions"]) for r in results["importance"]["runs"]] == [3, 3, 3]
    assert all(r["descriptions"] and r["init"]["descriptions"] for r in results["describe"]["runs"])
    joined = results["readouts"]["tasks"]["rte"]
    assert joined["aligned"] and [p["runs"] for p in joined["positions"]] == [3, 3, 3]
    page = (out / "report.html").read_text()
    for title in (
        "What the prompts say",
        "Which positions matter",
        "Findings",
        "Setup",
        "Accuracy",
        "Nearest tokens",
        "Scripts and languages",
        "Projected prompts",
        "Stochasticity",
        "Transfer between tasks",
    ):
        assert title in page, title
    assert "data:image/png;base64," in page and 'src="http' not in page
    assert (out / "tables" / "accuracy.csv").read_text().startswith("task,method,accuracy")
    saved = json.loads((out / "results.json").read_text())
    # every soft-prompt accuracy in the report's table is the mean of the runs' own run.json numbers
    accs = [json.loads((out / "runs" / f"rte-s{s}" / "run.json").read_text())["final"]["accuracy"] for s in (0, 1, 2)]
    mean = sum(accs) / 3
    assert re.search(rf"soft prompt.*?{mean:.3f} ±", page, re.S)
    assert saved["setup"]["actions"] == {"rte-s0": "trained", "rte-s1": "trained", "rte-s2": "trained"}

    # a second invocation skips every finished piece of work
    again = run_study(cfg, out, progress=False)
    assert set(again["setup"]["actions"].values()) == {"skipped"}
    assert again["runs"] == results["runs"]


def test_config_change_reruns_only_what_it_affects(tmp_path, tiny_model_dir, toy_data):
    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["majority"]')
    out = tmp_path / "study"
    run_study(cfg, out, progress=False)
    text = cfg.read_text().replace("seeds = [0, 1, 2]", "seeds = [0, 1, 3]")
    cfg.write_text(text)
    res = run_study(cfg, out, progress=False)
    assert res["setup"]["actions"] == {"rte-s0": "skipped", "rte-s1": "skipped", "rte-s3": "trained"}
    cfg.write_text(text.replace("epochs = 2", "epochs = 1"))
    res = run_study(cfg, out, progress=False)
    assert set(res["setup"]["actions"].values()) == {"retrained"}


def test_interrupted_study_resumes(tmp_path, tiny_model_dir, toy_data, monkeypatch):
    import softprompt.training.step as step_mod

    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["majority"]')
    out = tmp_path / "study"
    calls = {"n": 0}
    real = step_mod.LOSSES["choices"]

    def interrupting(scores, labels, weights=None):
        calls["n"] += 1
        if calls["n"] == 8:  # 6 batches per run: the second batch of seed 1
            raise KeyboardInterrupt
        return real(scores, labels, weights)

    monkeypatch.setitem(step_mod.LOSSES, "choices", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, progress=False)
    monkeypatch.setitem(step_mod.LOSSES, "choices", real)
    res = run_study(cfg, out, progress=False)
    assert res["setup"]["actions"]["rte-s0"] == "skipped"
    assert res["setup"]["actions"]["rte-s1"] == "resumed"
    assert (out / "report.html").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[study]\nmodle = 'x'\n", r"unknown key\(s\) \['modle'\]"),
        ("[study]\ntasks = ['rte']\n[train]\nepoch = 3\n", r"unknown key\(s\) \['epoch'\]"),
        ("[sudy]\n", "unknown section"),
        ("[study\n", "invalid TOML"),
        ("[study]\ntasks = ['nope']\n", "unknown task 'nope'"),
        ("[baselines]\nmethods = ['magic']\n", "unknown \\['magic'\\]"),
        ("[study]\nseeds = [0, 1]\n[analysis]\nreadout_seeds = [2]\n", r"readout_seeds: expected .* seeds \[0, 1\], got \[2\]"),
        ("[analysis]\nreadout_seeds = []\n", "readout_seeds: expected a non-empty list"),
    ],
)
def test_bad_study_configs(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SoftPromptError, match=match):
        load_study_config(p)


def test_shipped_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo.toml", "cpu-study.toml", "seed-study.toml", "ablation-cpu.toml", "transfer-init-cpu.toml"):
        cfg = load_study_config(root / name)
        assert cfg.tasks and cfg.seeds
    assert len(load_study_config(root / "ablation-cpu.toml").cells()) == 12
    assert load_study_config(root / "transfer-init-cpu.toml").transfer.init


def test_per_task_budgets(tmp_path):
    """[train.per_task.NAME] gives one task its own budget (by its listed name or a custom task's declared name);
    its baselines get it too; anything shared across tasks, a swept field or an unknown task is refused."""
    topics = Path(__file__).resolve().parents[1] / "examples" / "topics" / "topics.toml"
    head = f'[study]\ntasks = ["sst2", "{topics}"]\nseeds = [0, 1]\n[train]\nepochs = 2\nlr = 0.01\n'
    p = tmp_path / "s.toml"
    p.write_text(head + "[train.per_task.topics]\nepochs = 1\nmax_train = 50\n[train.per_task.sst2]\nlr = 0.02\n")
    cfg = load_study_config(p)
    t, s = cfg.run_config(str(topics), 1), cfg.run_config("sst2", 1)
    assert (t.epochs, t.max_train, t.lr) == (1, 50, 0.01) and (s.epochs, s.max_train, s.lr) == (2, None, 0.02)
    assert cfg.baseline_base(str(topics)).max_train == 50
    assert cfg.to_json()["per_task"]["topics"] == {"epochs": 1, "max_train": 50}
    for extra, match in [
        ("[train.per_task.rte]\nepochs = 1\n", "'rte' names no task of this study"),
        ("[train.per_task.topics]\ntokens = 5\n", r"\['tokens'\] are shared by every task"),
        ("[train.per_task.topics]\nepoch = 5\n", r"unknown key\(s\) \['epoch'\]"),
        ("[train.per_task.topics]\nepochs = 'two'\n", r"\[train.per_task.topics\]: .*epochs"),
        ("[sweep]\nlr = [0.01, 0.1]\n[train.per_task.topics]\nlr = 0.3\n", r"\['lr'\] are \[sweep\] axes"),
        (f'[train.per_task.topics]\nepochs = 1\n[train.per_task."{topics}"]\nepochs = 3\n', "give it one table"),
        ("[train]\nper_task = 3\n", "table of tables"),
    ]:
        p.write_text(head + extra if not extra.startswith("[train]") else head.replace("[train]\n", extra))
        with pytest.raises(SoftPromptError, match=match):
            load_study_config(p)


@pytest.mark.parametrize("task", ["../../etc/passwd.toml", "..toml", "/abs/dir/my task.toml", "rte"])
def test_run_dirs_cannot_escape_the_study(task, tmp_path):
    from softprompt.study.plan import task_dir_name

    name = task_dir_name(task)
    target = (tmp_path / "runs" / f"{name}-s0").resolve()
    assert target.parent == (tmp_path / "runs").resolve() and not name.startswith(".")


def test_a_custom_task_file_gets_its_baselines_in_the_report(tmp_path, tiny_model_dir, toy_data):
    """A task given as a .toml path: its baselines are found by the same name as its runs (the accuracy table once
    showed a custom task's soft prompt without its majority / no-prompt rows)."""
    from softprompt.records.results import StudyResults
    from softprompt.report.tables import accuracy_rows

    task = tmp_path / "pairs.toml"
    task.write_text(
        'name = "pairs"\ndescription = "Does the hypothesis follow?"\n'
        'template = "{premise}\\nQuestion: {hypothesis} Yes or no?\\nAnswer:"\nlabel_words = ["yes", "no"]\n'
        f'label_values = ["entailment", "not_entailment"]\n[data]\ntrain = "{toy_data}/rte/train.jsonl"\n'
        f'validation = "{toy_data}/rte/val.jsonl"\n'
    )
    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["majority", "no_prompt"]')
    text = cfg.read_text().replace('tasks = ["rte"]', f'tasks = ["{task}"]').replace("seeds = [0, 1, 2]", "seeds = [0]")
    cfg.write_text(text + "\n[train.per_task.pairs]\nepochs = 1\n")  # its own budget, named by its declared name
    results = run_study(cfg, tmp_path / "study", progress=False)
    methods = {r["method"] for r in accuracy_rows(StudyResults.from_dict(results)) if r["task"] == "pairs"}
    assert {"majority", "no_prompt", "soft_prompt"} <= methods
    assert [h["epoch"] for h in results["runs"][0]["history"]] == [1]  # [train] says 2 epochs
    # the report names it as its file declares it; the path appears once, in the setup table, next to the name
    html = (tmp_path / "study" / "report.html").read_text()
    assert html.count(str(task)) == 1 and f"pairs ({task})" in html
    assert "pairs: soft prompt" in html and "training budget of pairs</td><td>epochs 1</td>" in html


def test_two_task_files_that_would_share_run_folders_are_refused(tmp_path):
    """examples/a/task.toml and examples/b/task.toml both name their runs `task-s*`: refused before any run."""
    from softprompt.study import load_study_config

    src = Path(__file__).resolve().parents[1] / "examples"
    cfg = tmp_path / "study.toml"
    a, b = src / "custom_task" / "task.toml", src / "mrpc" / "task.toml"
    cfg.write_text(f'[study]\nmodel = "smollm2-135m"\ntasks = ["{a}", "{b}"]\nseeds = [0]\n')
    with pytest.raises(SoftPromptError, match=r"would share the run folders 'task'-s\*: rename one"):
        load_study_config(cfg)
    cfg.write_text(f'[study]\nmodel = "smollm2-135m"\ntasks = ["{a}", "{src / "topics" / "topics.toml"}"]\nseeds = [0]\n')
    assert len(load_study_config(cfg).tasks) == 2


def test_task_names_are_unique_within_a_study(tmp_path, toy_data):
    """A task file declaring a built-in's name (or two task files one name, or a task listed twice) would merge two
    tasks' rows, findings and [train.per_task] budgets: refused before any work, naming both tasks."""
    from softprompt.study import load_study_config

    def task_file(folder: str, name: str) -> Path:
        path = tmp_path / folder / f"{folder}.toml"
        path.parent.mkdir()
        path.write_text(
            f'name = "{name}"\ndescription = "Is it positive?"\ntemplate = "{{premise}}\\nAnswer:"\n'
            f'label_words = ["yes", "no"]\nlabel_values = ["entailment", "not_entailment"]\n'
            f'[data]\ntrain = "{toy_data}/rte/train.jsonl"\nvalidation = "{toy_data}/rte/val.jsonl"\n'
        )
        return path

    fake, a, b = task_file("fake", "sst2"), task_file("a", "pairs"), task_file("b", "Pairs")
    cfg = tmp_path / "study.toml"
    for tasks, match in [
        (["sst2", str(fake)], rf"tasks: '{fake}' declares the name 'sst2' of the built-in task 'sst2'.*rename the task"),
        ([str(fake), "sst2"], rf"'{fake}' declares the name 'sst2' of the built-in task 'sst2'"),
        ([str(a), str(b)], rf"'{a}' and '{b}' both declare the name 'Pairs'"),
        (["rte", "rte"], "'rte' is listed twice"),
    ]:
        cfg.write_text(f'[study]\nmodel = "smollm2-135m"\ntasks = {json.dumps(tasks)}\nseeds = [0]\n')
        with pytest.raises(SoftPromptError, match=match):
            load_study_config(cfg)
    cfg.write_text(f'[study]\nmodel = "smollm2-135m"\ntasks = ["rte", "{fake}"]\nseeds = [0]\n')
    assert len(load_study_config(cfg).tasks) == 2  # a built-in's name is free when that task is not in the study


def test_a_damaged_metrics_file_or_cache_entry_on_a_rerun(tmp_path, tiny_model_dir, toy_data, capsys):
    """A study re-run over a run whose metrics.jsonl holds a malformed line (or a line of the wrong shape) stops with
    one line naming FILE:LINE and what to do, instead of a traceback; the run is not retrained (it may have taken
    hours and its prompt is intact). A damaged cache entry (a result the study can recompute) is redone with a warning."""
    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["majority"]')
    cfg.write_text(cfg.read_text().replace("seeds = [0, 1, 2]", "seeds = [0]").replace("epochs = 2", "epochs = 1"))
    out = tmp_path / "study"
    first = run_study(cfg, out, progress=False)
    metrics = out / "runs" / "rte-s0" / "metrics.jsonl"
    good = metrics.read_text()
    line = json.loads(good.splitlines()[0])
    fix = "the run's metrics file is damaged: restore it, or retrain the run (in a study, delete its directory)"
    for bad, message in [
        ('{"epoch": 1, "step": 3, "accuracy"', f"{metrics}:2: invalid JSON (Expecting ':' delimiter at column 35); {fix}"),
        ("[1, 2]", f"{metrics}:2: expected a JSON object, got list; {fix}"),
        (json.dumps({**line, "step": "3"}), f"{metrics}:2: field 'step' is '3', not an integer; {fix}"),
        (json.dumps({k: v for k, v in line.items() if k != "accuracy"}), f"{metrics}:2: missing field 'accuracy'; {fix}"),
    ]:
        metrics.write_text(good + bad + "\n")
        with pytest.raises(SoftPromptError) as err:
            run_study(cfg, out, progress=False)
        assert str(err.value) == message
    metrics.write_text(good)
    cache = out / "baselines" / "rte" / "majority" / "result.json"
    cache.write_text("{oops")
    (out / "inputs.json").write_text("[1")  # what the last invocation's inputs were: only for the "changed" note
    capsys.readouterr()
    again = run_study(cfg, out, progress=False)
    err = capsys.readouterr().err
    assert f"{cache}: invalid JSON at line 1 column 2" in err and json.loads(cache.read_text())["value"]
    assert f"{out / 'inputs.json'}: invalid JSON" in err and json.loads((out / "inputs.json").read_text())
    assert again["runs"][0]["history"] == first["runs"][0]["history"] and again["runs"][0]["final"] == first["runs"][0]["final"]


def test_local_executor_never_imports_ray(tmp_path, tiny_model_dir, toy_data, monkeypatch):
    """The default executor works without Ray installed; `--executor ray` then says how to install it."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as when it is not installed
    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["majority"]')
    cfg.write_text(cfg.read_text().replace("seeds = [0, 1, 2]", "seeds = [0]").replace("epochs = 2", "epochs = 1"))
    res = run_study(cfg, tmp_path / "study", progress=False)
    assert res["setup"]["executor"] == {"name": "local"}
    with pytest.raises(SoftPromptError, match=r"--executor ray needs Ray.*pip install 'softprompt\[ray\]'"):
        run_study(cfg, tmp_path / "other", progress=False, executor="ray")
    assert not (tmp_path / "other").exists()  # refused before any work


@pytest.mark.parametrize("out", ["s3://bucket/study", "gs://b/s", "file:///tmp/study", "memory://x"])
def test_study_out_url_is_refused(tmp_path, out):
    with pytest.raises(SoftPromptError, match="URLs .* are not supported"):
        run_study(tmp_path / "unused.toml", out, progress=False)


def test_ray_flags_need_the_ray_executor(tmp_path, capsys):
    from softprompt.cli import main

    assert main(["study", str(tmp_path / "x.toml"), "--out", str(tmp_path / "o"), "--cpus-per-run", "2"]) == 2
    assert "--cpus-per-run applies to --executor ray only" in capsys.readouterr().err
    with pytest.raises(SoftPromptError, match="unknown executor 'dask'"):
        run_study(tmp_path / "x.toml", tmp_path / "o", executor="dask")


def test_ray_flags_reach_ray_options_and_unset_ones_keep_defaults(tmp_path, monkeypatch):
    import softprompt.study as study_mod
    from softprompt.cli import main
    from softprompt.study.ray_executor import RayOptions

    seen = {}

    def fake_run_study(config, out, **kw):
        seen.update(kw)
        return {"study": {"name": "x"}, "runs": []}

    monkeypatch.setattr(study_mod, "run_study", fake_run_study)
    argv = ["study", "x.toml", "--out", str(tmp_path / "o"), "--executor", "ray"]
    assert main([*argv, "--gpus-per-run", "0.5", "--ray-address", "auto"]) == 0
    assert seen["ray_options"] == RayOptions(address="auto", gpus_per_run=0.5)
    assert main([*argv, "--cpus-per-run", "2", "--max-retries", "0"]) == 0
    assert seen["ray_options"] == RayOptions(cpus_per_run=2, max_retries=0)
    assert seen["executor"] == "ray"


def test_readout_seeds_limit_importance_and_describe_to_those_runs(tmp_path, tiny_model_dir, toy_data):
    """The per-run readouts are the costliest analyses: [analysis] readout_seeds reads only those seeds' runs, while
    the nearest tokens, geometry and transfer still read every run, and the report says which runs were read."""
    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["majority"]')
    cfg.write_text(cfg.read_text() + "readout_seeds = [1]\n")
    results = run_study(cfg, tmp_path / "study", progress=False)
    assert [r["run"] for r in results["importance"]["runs"]] == ["rte-s1"]
    assert [r["run"] for r in results["describe"]["runs"]] == ["rte-s1"]
    assert len(results["neighbors"]["runs"]) == 3
    assert results["readouts"]["tasks"]["rte"]["read_runs"] == ["rte-s1"]
    assert "read 1 of the task's 3 runs ([analysis] readout_seeds): rte-s1." in (tmp_path / "study" / "report.html").read_text()

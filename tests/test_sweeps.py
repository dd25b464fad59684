"""Study sweeps and transfer initialisation on a tiny model: the cells and their units, the config errors, the
rerun of only the changed cells, the order of dependent units, and the report's Ablations and transfer-init
sections with the study's own numbers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

import softprompt.study.units as units_mod
from softprompt.errors import SoftPromptError
from softprompt.study import Study, load_study_config, run_study
from softprompt.study.sweep import cell_name
from tests.test_study import CONFIG

TOY_TASK = """
name = "toy"
description = "Does the premise support the hypothesis?"
template = "{premise}\\nHypothesis: {hypothesis}\\nAnswer:"
label_words = ["yes", "no"]
label_values = ["entailment", "not_entailment"]
[data]
train = "rte/train.jsonl"
validation = "rte/val.jsonl"
"""


def _config(tmp_path: Path, model_dir, data, *, extra: str = "", seeds="[0, 1]", tasks='["rte"]', methods='["majority"]') -> Path:
    text = CONFIG.format(model=model_dir, data=data, methods=methods)
    text = text.replace("seeds = [0, 1, 2]", f"seeds = {seeds}").replace("epochs = 2", "epochs = 1")
    text = text.replace('tasks = ["rte"]', f"tasks = {tasks}")
    p = tmp_path / "study.toml"
    p.write_text(text + extra)
    return p


def _toy_task(data: Path) -> str:
    path = data / "toy.toml"
    path.write_text(TOY_TASK)
    return str(path)


# ----------------------------------------------------------------------------- the plan


def test_sweep_expands_to_the_cartesian_product_with_stable_distinct_units(tmp_path):
    p = _config(tmp_path, "m", tmp_path, extra='[sweep]\ntokens = [2, 3, 4]\ninit = ["random", "text"]\n')
    cfg = load_study_config(p)
    assert cfg.cells() == [(("tokens", t), ("init", i)) for t in (2, 3, 4) for i in ("random", "text")]
    study = Study(cfg, tmp_path / "out")
    runs = [u for u in study.units() if u.method is None]
    assert len(runs) == 6 * 2  # cells x tasks x seeds
    dirs = [study.run_dir(u) for u in runs]
    assert len(set(dirs)) == len(dirs)
    assert study.run_label(runs[0]) == "tokens=2,init=random/rte-s0"
    configs = [study.run_config(u).to_dict() for u in runs]
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs)  # every unit's identity differs
    again = Study(load_study_config(p), tmp_path / "out")
    assert again.units() == study.units()  # stable: the same units, dirs and configs from the same file
    assert [again.run_config(u).to_dict() for u in runs] == configs
    assert cfg.analysis_cell() == (("tokens", 3), ("init", "text"))  # the [train] values (tokens = 3, init text)


def test_a_study_without_sweep_keeps_its_run_layout(tmp_path):
    study = Study(load_study_config(_config(tmp_path, "m", tmp_path)), tmp_path / "out")
    assert [study.run_label(u) for u in study.units() if u.method is None] == ["rte-s0", "rte-s1"]


def test_cell_names_stay_distinct_when_characters_are_replaced():
    sweep = {"init_text": ["a/b", "a:b", "a b c"]}
    names = {cell_name(sweep, (("init_text", v),)) for v in sweep["init_text"]}
    assert len(names) == 3 and all("/" not in n and ":" not in n for n in names)
    assert cell_name({"lr": [0.01, 0.03]}, (("lr", 0.03),)) == "lr=0.03"


@pytest.mark.parametrize(
    "extra, match",
    [
        ("[sweep]\ntokenz = [1, 2]\n", r"\[sweep\]: unknown field 'tokenz'"),
        ("[sweep]\ntokens = []\n", r"\[sweep\] tokens: expected a non-empty list"),
        ("[sweep]\ntokens = 5\n", r"\[sweep\] tokens: expected a non-empty list of values, got 5"),
        ("[sweep]\ntokens = [1, '5']\n", r"\[sweep\] tokens: '5' is not an int"),
        ("[sweep]\nlr = [0.1, true]\n", r"\[sweep\] lr: True is not a float"),
        ("[sweep]\ntokens = [1, 0]\n", r"\[sweep\] tokens = 0: tokens must be at least 1, got 0"),
        ("[sweep]\ninit = ['text', 'magic']\n", r"\[sweep\] init = 'magic': unknown init 'magic'"),
        ("[sweep]\ntokens = [1, 1]\n", r"\[sweep\] tokens: values repeat"),
        ("[sweep]\nseed = [1, 2]\n", r"seed cannot be swept: the study sets it"),
        ("[sweep]\ntask = ['rte']\n", r"task cannot be swept"),
        ("[sweep]\nmodel = ['x']\n", r"model cannot be swept"),
        ("[sweep]\nmethod = ['lora']\n", r"method cannot be swept"),
        ("[sweep]\ndata_dir = ['x']\n", r"data_dir cannot be swept"),
        (
            "[sweep]\ntokens = [2, 3]\n[analysis]\ncell = { tokens = 7 }\n",
            r"cell: tokens = 7 is not one of the swept values \[2, 3\]",
        ),
        ("[sweep]\ntokens = [2, 3]\n[analysis]\ncell = { init = 'text' }\n", r"cell: 'init' is not a swept axis"),
        ("[analysis]\ncell = { tokens = 3 }\n", r"cell: there is no \[sweep\]"),
        ("[sweep]\ninit = ['text', 'task:cb']\n", r"init 'task:cb' names no task of this study"),
        ("[transfer]\ninit = true\n", r"\[transfer\] init = true needs at least two tasks"),
        ("[transfer]\nint = true\n", r"\[transfer\]: unknown key\(s\) \['int'\]"),
    ],
)
def test_bad_sweep_configs_are_one_line_errors(tmp_path, extra, match):
    text = CONFIG.format(model="m", data=tmp_path, methods='["majority"]')
    text = text.replace("\n[analysis]\nk = 3\n", "\n") if "[analysis]" in extra else text
    p = tmp_path / "bad.toml"
    p.write_text(text + extra)
    with pytest.raises(SoftPromptError, match=match) as e:
        load_study_config(p)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- running


def test_changed_axis_value_reruns_only_its_cells_and_the_report_plots_them(tmp_path, tiny_model_dir, toy_data):
    methods = '["majority", "no_prompt", "english_prompt"]'
    p = _config(tmp_path, tiny_model_dir, toy_data, methods=methods, extra="[sweep]\ntokens = [1, 3]\n")
    out = tmp_path / "study"
    res = run_study(p, out, progress=False)
    assert set(res["setup"]["actions"]) == {f"tokens={t}/rte-s{s}" for t in (1, 3) for s in (0, 1)}
    assert [r["name"] for r in res["runs"]] == ["tokens=3/rte-s0", "tokens=3/rte-s1"]  # the analysis cell's
    # the ablation table: each cell's mean is the mean of its runs' own run.json accuracies
    for row in res["ablations"]["rows"]:
        accs = [json.loads((out / "runs" / f"tokens={row['tokens']}" / f"rte-s{s}" / "run.json").read_text()) for s in (0, 1)]
        assert row["n"] == 2 and row["accuracy_mean"] == pytest.approx(sum(a["final"]["accuracy"] for a in accs) / 2)
    assert set(res["ablations"]["references"]["rte"]) == {"no_prompt", "english_prompt"}
    page = (out / "report.html").read_text()
    assert 'id="ablations"' in page and "Accuracy against tokens" in page
    (comparison,) = res["ablations"]["comparisons"]
    assert comparison["n"] == 2 and comparison["verdict"] in ("tie", "ahead")
    assert re.search(r"rte, tokens: highest mean accuracy at tokens=\d \(\d\.\d{3} ± \d\.\d{3}, n=2\)", page)
    assert (out / "tables" / "ablations.csv").read_text().startswith("task,tokens,n,accuracy_mean")
    assert json.loads((out / "results.json").read_text())["ablations"] == res["ablations"]

    p.write_text(p.read_text().replace("tokens = [1, 3]", "tokens = [1, 4]").replace("tokens = 3\n", "tokens = 4\n"))
    again = run_study(p, out, progress=False)
    assert again["setup"]["actions"] == {
        "tokens=1/rte-s0": "skipped",
        "tokens=1/rte-s1": "skipped",
        "tokens=4/rte-s0": "trained",
        "tokens=4/rte-s1": "trained",
    }


def test_task_init_and_transfer_init_train_sources_first(tmp_path, tiny_model_dir, toy_data, monkeypatch):
    toy = _toy_task(toy_data)
    extra = '[sweep]\ninit = ["text", "task:rte"]\n[transfer]\ninit = true\n'
    p = _config(tmp_path, tiny_model_dir, toy_data, tasks=f'["rte", "{toy}"]', methods='["majority", "no_prompt"]', extra=extra)
    order: list[Path] = []
    real = units_mod.train

    def recording(cfg, out, **kw):
        order.append(Path(out))
        return real(cfg, out, **kw)

    monkeypatch.setattr(units_mod, "train", recording)
    out = tmp_path / "study"
    res = run_study(p, out, progress=False)
    names = [d.relative_to(out / "runs").as_posix() for d in order]
    assert len(names) == 2 * 2 * 2 + 2 * 2  # cells x tasks x seeds, then 2 ordered pairs x 2 seeds
    for seed in (0, 1):
        # init = task:rte: toy's run starts from rte's run of the same cell and seed, rte's own run from its text
        cell = "init=task-rte"
        src, dep = out / "runs" / cell / f"rte-s{seed}", out / "runs" / cell / f"toy-s{seed}"
        assert names.index(f"{cell}/rte-s{seed}") < names.index(f"{cell}/toy-s{seed}")
        assert json.loads((src / "run.json").read_text())["config"]["init"] == "text"
        assert _source_sha(dep) == _sha(src / "prompt.safetensors")
        for a, b in (("rte", "toy"), ("toy", "rte")):  # [transfer] init in the analysis cell (init = text)
            name = f"init=text/{b}-from-{a}-s{seed}"
            assert names.index(f"init=text/{a}-s{seed}") < names.index(name)
            assert _source_sha(out / "runs" / name) == _sha(out / "runs" / f"init=text/{a}-s{seed}" / "prompt.safetensors")
    _check_transfer_init_section(res, out)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_sha(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["prompt"]["source"]["sha256"]


def _accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "run.json").read_text())["final"]["accuracy"]


def _check_transfer_init_section(res: dict, out: Path) -> None:
    """The transfer-init numbers are the runs' own, paired by seed; the report states the similarity verdict."""
    tri = res["transfer_init"]
    assert tri["own_init"] == "text" and len(tri["pairs"]) == 2
    for pair in tri["pairs"]:
        a, b = Path(pair["source"]).stem, Path(pair["target"]).stem
        gains = [
            _accuracy(out / "runs" / f"init=text/{b}-from-{a}-s{s}") - _accuracy(out / "runs" / f"init=text/{b}-s{s}")
            for s in (0, 1)
        ]
        assert pair["n"] == 2 and pair["gain_mean"] == pytest.approx(sum(gains) / 2)
        assert pair["gain_se"] == pytest.approx(abs(gains[0] - gains[1]) / 2)  # sd / sqrt(2) of two values
        assert pair["zero_shot_gain"] is not None
    levels = {(c["similarity"], c["level"]): c["n"] for c in tri["correlations"]}
    assert levels[("pooled_cosine", "task pairs")] == 2 and levels[("pooled_cosine", "task pairs x seeds")] == 4
    page = (out / "report.html").read_text()
    assert 'id="transfer-init"' in page and 'id="ablations"' in page
    assert "no evidence that prompt similarity predicted the gain (at least 3 points are needed)" in page
    assert (out / "tables" / "transfer_init.csv").exists()
    assert len(res["transfer_init_runs"]) == 4

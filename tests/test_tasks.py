"""Tasks: built-in loaders on the real files, COPA/WSC formatting, custom TOML tasks and their errors,
and cross-task evaluation through one Evaluator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from softprompt.errors import SoftPromptError
from softprompt.tasks import get_task
from softprompt.tasks.custom import load_task_file
from softprompt.tasks.stats import task_stats

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_task" / "task.toml"

# ----------------------------------------------------------------------------- built-in tasks on the real files

SIZES = {
    "rte": (2490, 277),
    "cb": (250, 56),
    "copa": (400, 100),
    "wsc": (554, 104),
    "wic": (5428, 638),
    "sst2": (67349, 872),
}
BALANCE = {  # label counts in label-word order
    ("rte", "train"): [1249, 1241],
    ("cb", "train"): [115, 119, 16],
    ("boolq", "validation"): [1237, 2033],
    ("wic", "train"): [2714, 2714],
    ("wic", "validation"): [319, 319],
    ("sst2", "train"): [29780, 37569],
    ("sst2", "validation"): [428, 444],
}


@pytest.mark.parametrize("name", list(SIZES))
def test_builtin_split_sizes(name, data_dir):
    task = get_task(name)
    for split, n in zip(("train", "validation"), SIZES[name], strict=True):
        ex = task.load(split, data_dir)
        assert len(ex) == n
        assert all(len(e.choices) == task.num_classes and 0 <= e.label < task.num_classes for e in ex)
        assert [e.idx for e in ex[:3]] == ([0, 1, 2] if name != "sst2" else [-1, -1, -1])


@pytest.mark.parametrize("name,split", list(BALANCE))
def test_builtin_label_balance(name, split, data_dir):
    counts = Counter(e.label for e in get_task(name).load(split, data_dir))
    assert [counts[i] for i in range(get_task(name).num_classes)] == BALANCE[(name, split)]


def test_majority_on_validation_matches_published(data_dir):
    rows = {r["task"]: r for r in task_stats(["rte", "cb", "copa", "wsc"], data_dir)}
    assert {t: rows[t]["majority (val)"] for t in rows} == {"rte": 52.7, "cb": 50.0, "copa": 55.0, "wsc": 63.5}
    assert rows["cb"]["val labels"] == "23/28/5"


def test_boolq_has_no_local_train_split(data_dir):
    assert len(get_task("boolq").load("validation", data_dir)) == 3270
    with pytest.raises(SoftPromptError, match="no train split .*BoolQ train split is not in the local data"):
        get_task("boolq").load("train", data_dir)
    row = task_stats(["boolq"], data_dir)[0]
    assert row["train"] == "n/a" and row["validation"] == 3270


def test_copa_context_and_choices(data_dir):
    ex = get_task("copa").load("validation", data_dir)
    # {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
    #  "choice2": "Water flowed from the spout.", "question": "effect", "label": 1}
    assert ex[0].context == "The man turned on the faucet therefore"
    assert ex[0].choices == (" the toilet filled with water.", " water flowed from the spout.")
    assert ex[0].label == 1
    causes = [e for e in ex if e.context.endswith(" because")]
    assert causes and len(causes) + sum(e.context.endswith(" therefore") for e in ex) == 100


def test_wsc_nested_spans(data_dir):
    task = get_task("wsc")
    ex = task.load("validation", data_dir)[0]
    # {"text": "Bernard , who ... take his claim away from him .", "target": {"span1_text": "anyone", "span2_text": "him"}, "label": false}
    assert ex.context.startswith("Passage: Bernard , who had not told")
    assert 'does the pronoun "*him*" refer to "*anyone*"?' in ex.context
    assert ex.choices == (" no", " yes") and ex.label == 0
    flat = task.to_example({"text": "It sat.", "span1_text": "the cat", "span2_text": "It", "label": True}, "hub")
    assert 'pronoun "*It*" refer to "*the cat*"' in flat.context and flat.label == 1


# ----------------------------------------------------------------------------- custom tasks

TOML = """name = "toy-sentiment"
description = "Is the sentence positive or negative?"
template = "{sentence}\\nQuestion: positive or negative?\\nAnswer:"
label_words = ["negative", "positive"]
label_values = ["neg", "pos"]
metric = "accuracy"

[data]
train = "train.jsonl"
validation = "val.jsonl"
"""
ROWS = [
    {"sentence": "a charming movie", "label": "pos"},
    {"sentence": "a boring movie", "label": "neg"},
    {"sentence": "good and affecting", "label": "pos"},
    {"sentence": "bad, boring", "label": "neg"},
]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_task(d: Path, toml: str = TOML, files: dict[str, str | bytes] | None = None) -> Path:
    files = {"train.jsonl": _jsonl(ROWS * 2), "val.jsonl": _jsonl(ROWS), **(files or {})}
    for name, content in files.items():
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    (d / "task.toml").write_text(toml, encoding="utf-8")
    return d / "task.toml"


def load_all(toml: Path):
    task = get_task(str(toml))
    return task, task.load("train"), task.load("validation")


def test_valid_custom_task(tmp_path):
    task, train, val = load_all(write_task(tmp_path))
    assert task.name == "toy-sentiment" and task.metric == "accuracy"
    assert Path(task.source.files["train"]).is_absolute()
    assert len(train) == 8 and len(val) == 4
    assert val[0].context == "a charming movie\nQuestion: positive or negative?\nAnswer:"
    assert val[0].choices == (" negative", " positive") and [e.label for e in val] == [1, 0, 1, 0]
    assert get_task(str(tmp_path / "task.toml")) is task  # unchanged file: same Task (caches hit)


def test_shipped_example_task():
    task = load_task_file(EXAMPLE)
    train, val = task.load("train"), task.load("validation")
    assert (len(train), len(val)) == (16, 8)
    assert Counter(e.label for e in train) == {0: 8, 1: 8} and Counter(e.label for e in val) == {0: 4, 1: 4}


def test_csv_and_tsv_with_fields_mapping_and_int_labels(tmp_path):
    toml = TOML.replace('label_values = ["neg", "pos"]', "label_values = [0, 1]").replace(
        'train = "train.jsonl"\nvalidation = "val.jsonl"',
        'train = "train.csv"\nvalidation = "val.tsv"\n\n[fields]\nsentence = "review text"',
    )
    csv = 'review text,label\n"good, charming",1\n"a movie\nover two lines",0\nboring,0\n'
    tsv = 'review text\tlabel\nbare "quotes" here\t1\n'
    task, train, val = load_all(write_task(tmp_path, toml, {"train.csv": csv, "val.tsv": tsv}))
    assert [e.context.split("\n")[0] for e in train] == ["good, charming", "a movie", "boring"]
    assert train[1].context.startswith("a movie\nover two lines") and [e.label for e in train] == [1, 0, 0]
    assert val[0].context.startswith('bare "quotes" here')
    bad = 'review text,label\nfine,1\n"two\nlines",0\nbroken,1,extra\n'
    write_task(tmp_path, toml, {"train.csv": bad})
    with pytest.raises(SoftPromptError, match=r"train\.csv:5: 3 columns, the header has 2"):
        task.load("train")


def test_fields_mapping_to_missing_column(tmp_path):
    toml = TOML + '\n[fields]\nsentence = "text"\n'
    with pytest.raises(SoftPromptError, match=r"train\.jsonl:1: missing field 'text' used by the template"):
        load_all(write_task(tmp_path, toml))


def test_bom_is_accepted_everywhere(tmp_path):
    bom = "\ufeff"
    toml = TOML.replace("train.jsonl", "train.csv")
    csv = bom + "sentence,label\ngood,pos\nbad,neg\n"
    path = write_task(tmp_path, toml, {"train.csv": csv, "val.jsonl": bom + _jsonl(ROWS)})
    path.write_text(bom + toml, encoding="utf-8")
    _, train, val = load_all(path)
    assert [e.label for e in train] == [1, 0] and len(val) == 4


@pytest.mark.parametrize(
    "files,pattern",
    [
        ({"train.jsonl": _jsonl([ROWS[0], {"sentence": "x"}])}, r"train\.jsonl:2: missing field 'label'"),
        (
            {"train.jsonl": _jsonl([ROWS[0], ROWS[1], {"sentence": "x", "label": "maybe"}])},
            r"train\.jsonl:3 field 'label': label 'maybe' is not one of the task's labels \['neg', 'pos'\]",
        ),
        (
            {"train.jsonl": _jsonl([{"text": "x", "label": "pos"}])},
            r"train\.jsonl:1: missing field 'sentence' used by the template",
        ),
        (
            {"train.jsonl": _jsonl(ROWS[:1]) + '{"sentence": "x", "label": pos}\n'},
            r"train\.jsonl:2: invalid JSON \(Expecting value at column 28\)",
        ),
        ({"train.jsonl": _jsonl(ROWS[:1]) + "[1, 2]\n"}, r"train\.jsonl:2: expected a JSON object, got list"),
        (
            {"train.jsonl": _jsonl(ROWS[:2]).encode() + b'{"sentence": "caf\xe9", "label": "pos"}\n'},
            r"train\.jsonl:3: not UTF-8 \(byte 0xe9",
        ),
        ({"train.jsonl": "\n\n"}, r"the train split is empty \(.*train\.jsonl: no records\)"),
    ],
    ids=["missing-label", "unknown-label", "template-field", "bad-json", "not-object", "not-utf8", "empty"],
)
def test_bad_data_names_file_line_and_field(tmp_path, files, pattern):
    task = get_task(str(write_task(tmp_path, files=files)))
    with pytest.raises(SoftPromptError, match=pattern):
        task.load("train")
    assert str(tmp_path) in _message(task.load, "train")


def _message(fn, *args) -> str:
    with pytest.raises(SoftPromptError) as e:
        fn(*args)
    return str(e.value)


@pytest.mark.parametrize(
    "name,content,pattern",
    [
        (
            "train.csv",
            "sentence\tlabel\ngood\tpos\n",
            r"train\.csv:1: the header has one column .*tabs, so the file looks tab-separated",
        ),
        (
            "train.tsv",
            "sentence,label\ngood,pos\n",
            r"train\.tsv:1: the header has one column .*commas, so the file looks comma-separated",
        ),
        ("train.csv", "sentence\ngood\n", r"train\.csv:1: the header has one column 'sentence': wrong delimiter\?"),
        ("train.csv", "", r"train\.csv: empty file"),
        ("train.csv", "sentence,label\n", r"the train split is empty"),
        ("train.csv", "sentence,label,label\nx,pos,pos\n", r"train\.csv:1: the header has repeated column name\(s\) \['label'\]"),
        ("train.csv", 'sentence,label\ngood,pos\n"unclosed,pos\n', r"train\.csv:3: malformed CSV"),
        ("train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\tx\n", r"train\.tsv:3: 3 columns, the header has 2 .*stray tab"),
    ],
    ids=["tsv-as-csv", "csv-as-tsv", "one-column", "empty-file", "header-only", "dup-header", "bad-quote", "extra-column"],
)
def test_bad_delimited_files(tmp_path, name, content, pattern):
    toml = TOML.replace('train = "train.jsonl"', f'train = "{name}"')
    task = get_task(str(write_task(tmp_path, toml, {name: content})))
    with pytest.raises(SoftPromptError, match=pattern):
        task.load("train")


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda t: t.replace('metric = "accuracy"', 'metric = "accuracy'), r"task\.toml:6:\d+: invalid TOML: "),
        (lambda t: t.replace("label_words", "lable_words"), r"task\.toml:4: lable_words: unknown key in .*task\.toml"),
        (lambda t: t + 'test = "t.jsonl"\n', r"task\.toml:11: data\.test: unknown key"),
        (
            lambda t: t.replace('template = "{sentence}\\nQuestion: positive or negative?\\nAnswer:"\n', ""),
            r"task\.toml: missing required key 'template'",
        ),
        (lambda t: t.replace('validation = "val.jsonl"\n', ""), r"task\.toml:8: data\.validation: missing"),
        (
            lambda t: t.replace('train = "train.jsonl"', 'train = "nope.jsonl"'),
            r"task\.toml:9: data\.train: data file .*nope\.jsonl not found",
        ),
        (
            lambda t: t.replace('train = "train.jsonl"', 'train = "train.txt"'),
            r"task\.toml:9: data\.train: 'train\.txt': unsupported file type",
        ),
        (lambda t: t.replace('["neg", "pos"]', '["neg"]'), r"task\.toml:5: label_values: 1 values for 2 label words"),
        (lambda t: t.replace('["neg", "pos"]', '["neg", "NEG"]'), r"task\.toml:5: label_values: label values must be distinct"),
        (lambda t: t.replace('["negative", "positive"]', '["negative", "negative"]'), r"task\.toml:4: label_words: .*distinct"),
        (lambda t: t.replace('["negative", "positive"]', '"negative"'), r"task\.toml:4: label_words: expected a list"),
        (
            lambda t: t.replace('["negative", "positive"]', '[" negative", "positive"]'),
            r"label_words: ' negative' has surrounding spaces",
        ),
        (lambda t: t.replace('"accuracy"', '"f1"'), r"task\.toml:6: metric: 'f1': expected one of accuracy, f1_macro"),
        (lambda t: t.replace("{sentence}", "{0}"), r"task\.toml:3: template: positional field \{0\}"),
        (lambda t: t.replace("{sentence}", "{sentence} {label}"), r"task\.toml:3: template: uses the label field"),
        (lambda t: t.replace("{sentence}", "{sentence"), r"task\.toml:3: template: not a valid format string"),
        (lambda t: t.replace('name = "toy-sentiment"', 'name = "toy sentiment"'), r"task\.toml:1: name: 'toy sentiment'"),
        (lambda t: t.replace('name = "toy-sentiment"', "name = 3"), r"task\.toml:1: name: expected a string, got int"),
    ],
    ids=[
        "invalid-toml",
        "unknown-key",
        "unknown-data-key",
        "missing-key",
        "missing-split",
        "missing-file",
        "bad-suffix",
        "values-length",
        "values-dupe",
        "words-dupe",
        "words-not-list",
        "words-space",
        "metric",
        "positional",
        "label-in-template",
        "bad-format",
        "bad-name",
        "name-type",
    ],
)
def test_bad_task_file_names_file_line_and_key(tmp_path, edit, pattern):
    path = write_task(tmp_path, edit(TOML))
    with pytest.raises(SoftPromptError, match=pattern):
        get_task(str(path))


def test_task_file_not_utf8_and_missing(tmp_path):
    path = write_task(tmp_path)
    path.write_bytes(TOML.encode().replace(b"Is the", b"Is th\xff"))
    with pytest.raises(SoftPromptError, match=r"task\.toml:2:\d+: not UTF-8 \(byte 0xff\)"):
        get_task(str(path))
    with pytest.raises(SoftPromptError, match=r"task file .*nothere\.toml not found"):
        get_task(str(tmp_path / "nothere.toml"))


@pytest.mark.parametrize(
    "field",
    ["{sentence.__class__}", "{sentence[0]}", "{sentence!r}", "{sentence:>99}", "{sentence!r:>99999999}", "{sentence:{x}}"],
)
def test_template_fields_are_plain_names(tmp_path, field):
    """`{text.__class__}` rendered every input as `<class 'str'>` and `{text!r:>99999999}` padded each to 100M
    characters (train sat at 2 GB): a field is a plain name, refused otherwise naming the file, its line, the field
    and what is allowed, when the task file is loaded."""
    path = write_task(tmp_path, TOML.replace("{sentence}", field))
    with pytest.raises(SoftPromptError) as err:
        get_task(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}:3: template: field {field} is not allowed: a template field is a plain name, {{field}}")
    assert "no attribute (.x), index ([0]), conversion (!r) or format spec (:>9)" in message and "\n" not in message


def test_every_task_template_has_plain_fields_and_a_bad_one_is_refused():
    from softprompt.tasks.base import DataSource, Task, template_field_problem
    from softprompt.tasks.builtin import BUILTIN_TASKS

    for name in BUILTIN_TASKS:
        assert template_field_problem(get_task(name).template) is None, name
    with pytest.raises(SoftPromptError, match=r"task t: template '\{x\[0\]\}': field \{x\[0\]\} is not allowed"):
        Task("t", "d", "{x[0]}", ("a", "b"), ("a", "b"), DataSource())


def test_a_rendered_input_is_bounded_in_characters(tmp_path):
    """A record whose input renders beyond MAX_INPUT_CHARS is refused naming the file and line, before tokenizing."""
    from softprompt.tasks.base import MAX_INPUT_CHARS

    huge = {"sentence": "x" * (MAX_INPUT_CHARS + 1), "label": "pos"}
    task = get_task(str(write_task(tmp_path, files={"train.jsonl": _jsonl([*ROWS, huge])})))
    with pytest.raises(SoftPromptError, match=r"train\.jsonl:5: the input is 100,0\d\d characters long once formatted; an input"):
        task.load("train")
    assert len(task.load("validation")) == 4


def test_a_symlink_loop_is_one_line_naming_the_file(tmp_path):
    """A data file (or the task file) that is a symbolic link loop was `RuntimeError: Symlink loop` from
    Path.resolve(): now one line naming the file, for a task file's data, the task file and a built-in's data."""
    (tmp_path / "loop.jsonl").symlink_to("loop.jsonl")
    path = write_task(tmp_path, TOML.replace('train = "train.jsonl"', 'train = "loop.jsonl"'))
    with pytest.raises(SoftPromptError, match=r"task\.toml:9: data\.train: data file .*loop\.jsonl is a symbolic link loop"):
        get_task(str(path))
    (tmp_path / "task-loop.toml").symlink_to("task-loop.toml")
    with pytest.raises(SoftPromptError, match=r"task file .*task-loop\.toml is a symbolic link loop"):
        get_task(str(tmp_path / "task-loop.toml"))
    (tmp_path / "data" / "rte").mkdir(parents=True)
    (tmp_path / "data" / "rte" / "train.jsonl").symlink_to("train.jsonl")
    with pytest.raises(SoftPromptError, match=r"task rte: data file .*train\.jsonl is a symbolic link loop"):
        get_task("rte").load("train", tmp_path / "data")


def test_tasks_stats_cli_accepts_toml(capsys):
    from softprompt.cli import main

    assert main(["tasks", "--stats", "--task", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "gadget-reviews" in out and "4/4" in out


def test_custom_task_trains_one_epoch(tiny_llama, tmp_path):
    from softprompt.config import TrainConfig
    from softprompt.runs.directory import load_run
    from softprompt.training import train

    cfg = TrainConfig(task=str(EXAMPLE), model="tiny", tokens=4, epochs=1, batch_size=4, lr=0.1, compute_dtype="float32")
    res = train(cfg, tmp_path / "run", backbone=tiny_llama, progress=False)
    run = load_run(tmp_path / "run")
    assert run.record.task.name == "gadget-reviews" and run.record.train_examples == 16
    assert res.final.n == 8 and len(res.history) == 1 and set(res.baselines) == {"no_prompt", "english_prompt"}


# ----------------------------------------------------------------------------- cross-task evaluation


def test_one_evaluator_two_prompts_two_tasks_tokenizes_once_per_task(tiny_llama, toy_data, monkeypatch):
    import softprompt.evaluate as evaluate_mod
    from softprompt.evaluate import Evaluator

    calls: Counter = Counter()
    real = evaluate_mod.encode_examples

    def counting(examples, tokenizer, *, n_prompt=0, **kw):
        calls[(examples[0].context, n_prompt)] += 1
        return real(examples, tokenizer, n_prompt=n_prompt, **kw)

    monkeypatch.setattr(evaluate_mod, "encode_examples", counting)
    ev = Evaluator(tiny_llama, data_dir=toy_data, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randn(4, 32, generator=g) * 0.02, torch.randn(4, 32, generator=g) * 0.02]
    results = {}
    for task in ("rte", str(EXAMPLE)):
        for k, p in enumerate(prompts):
            results[(task, k)] = ev.evaluate(task, p)
            ev.evaluate(task, p)  # again: served from the cache
    assert sorted(calls.values()) == [1, 1] and {n for _, n in calls} == {4}
    assert {r.task for r in results.values()} == {"rte", "gadget-reviews"}
    assert results[("rte", 0)].n == 4 and results[(str(EXAMPLE), 1)].n == 8
    ev.evaluate("rte", torch.zeros(6, 32))  # another prompt length is another tokenization
    assert sum(calls.values()) == 3
    # the cache changes nothing: a fresh evaluator gives the same predictions
    fresh = Evaluator(tiny_llama, data_dir=toy_data, compute_dtype=torch.float32).evaluate(str(EXAMPLE), prompts[1])
    assert fresh.predictions == results[(str(EXAMPLE), 1)].predictions

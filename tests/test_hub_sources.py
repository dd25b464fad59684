"""`--data-dir hub`: every built-in task asks `datasets.load_dataset` for a Hub repository that serves
plain parquet files (what `datasets` >= 4 still loads), at a pinned commit, and turns rows shaped like
those parquet rows (ClassLabel ints, WSC's flat spans) into the right Examples. The Hub itself is not
reachable here: `load_dataset` is replaced by a fake that checks the request (see docs/reliability.md,
"Hub sources", for what was verified about the repositories and where)."""

from __future__ import annotations

import itertools

import pytest

from softprompt.errors import SoftPromptError
from softprompt.tasks import get_task

datasets = pytest.importorskip("datasets")

SUPER_GLUE = ("aps/super_glue", "3de24cf8022e94f4ee4b9d55a6f539891524d646")
GLUE = ("nyu-mll/glue", "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c")
WSC_TEXT = "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful."

# task -> (repository and revision, config, ClassLabel names of `label` as the Hub declares them, rows, expected)
# expected: (context, choices, label index) per row, written out by hand.
CASES = {
    "rte": (
        SUPER_GLUE,
        "rte",
        ["entailment", "not_entailment"],
        [
            {"premise": "The cat sat on the mat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
            {"premise": "The dog ran away.", "hypothesis": "The dog sat.", "idx": 1, "label": 1},
        ],
        [
            ("The cat sat on the mat.\nQuestion: A cat sat. True or False?\nAnswer:", (" True", " False"), 0),
            ("The dog ran away.\nQuestion: The dog sat. True or False?\nAnswer:", (" True", " False"), 1),
        ],
    ),
    "cb": (
        SUPER_GLUE,
        "cb",
        ["entailment", "contradiction", "neutral"],
        [
            {"premise": "It rained.", "hypothesis": "It was dry.", "idx": 0, "label": 1},
            {"premise": "She may come.", "hypothesis": "She came.", "idx": 1, "label": 2},
        ],
        [
            ("It rained.\nQuestion: It was dry. True, False, or Neither?\nAnswer:", (" True", " False", " Neither"), 1),
            ("She may come.\nQuestion: She came. True, False, or Neither?\nAnswer:", (" True", " False", " Neither"), 2),
        ],
    ),
    "copa": (
        SUPER_GLUE,
        "copa",
        ["choice1", "choice2"],
        [
            {
                "premise": "The man broke his toe.",
                "choice1": "He dropped a hammer on his foot.",
                "choice2": "He got a hole in his sock.",
                "question": "cause",
                "idx": 0,
                "label": 0,
            },
            {
                "premise": "I tipped the bottle.",
                "choice1": "The liquid in the bottle froze.",
                "choice2": "The liquid in the bottle poured out.",
                "question": "effect",
                "idx": 1,
                "label": 1,
            },
        ],
        [
            ("The man broke his toe because", (" he dropped a hammer on his foot.", " he got a hole in his sock."), 0),
            ("I tipped the bottle therefore", (" the liquid in the bottle froze.", " the liquid in the bottle poured out."), 1),
        ],
    ),
    "wsc": (
        SUPER_GLUE,
        "wsc.fixed",
        ["False", "True"],
        [
            {
                "text": WSC_TEXT,
                "span1_index": 0,
                "span2_index": 13,
                "span1_text": "Mark",
                "span2_text": "He",
                "idx": 0,
                "label": 1,
            },
            {
                "text": WSC_TEXT,
                "span1_index": 2,
                "span2_index": 13,
                "span1_text": "Pete",
                "span2_text": "He",
                "idx": 1,
                "label": 0,
            },
        ],
        [
            (
                f'Passage: {WSC_TEXT}\nQuestion: In the passage above, does the pronoun "*He*" refer to "*Mark*"?\nAnswer:',
                (" no", " yes"),
                1,
            ),
            (
                f'Passage: {WSC_TEXT}\nQuestion: In the passage above, does the pronoun "*He*" refer to "*Pete*"?\nAnswer:',
                (" no", " yes"),
                0,
            ),
        ],
    ),
    "boolq": (
        SUPER_GLUE,
        "boolq",
        ["False", "True"],
        [
            {"question": "is the sky blue", "passage": "The sky is blue on clear days.", "idx": 0, "label": 1},
            {"question": "is snow hot", "passage": "Snow is frozen water.", "idx": 1, "label": 0},
        ],
        [
            ("The sky is blue on clear days.\nQuestion: is the sky blue?\nAnswer:", (" no", " yes"), 1),
            ("Snow is frozen water.\nQuestion: is snow hot?\nAnswer:", (" no", " yes"), 0),
        ],
    ),
    "wic": (
        SUPER_GLUE,
        "wic",
        ["False", "True"],
        [
            {
                "word": "bank",
                "sentence1": "He sat on the river bank.",
                "sentence2": "She works at a bank.",
                "start1": 19,
                "start2": 15,
                "end1": 23,
                "end2": 19,
                "idx": 0,
                "label": 0,
            },
            {
                "word": "run",
                "sentence1": "I run every day.",
                "sentence2": "They run in the park.",
                "start1": 2,
                "start2": 5,
                "end1": 5,
                "end2": 8,
                "idx": 1,
                "label": 1,
            },
        ],
        [
            (
                "Sentence 1: He sat on the river bank.\nSentence 2: She works at a bank.\nQuestion: Is the word 'bank' "
                "used in the same way in the two sentences above?\nAnswer:",
                (" no", " yes"),
                0,
            ),
            (
                "Sentence 1: I run every day.\nSentence 2: They run in the park.\nQuestion: Is the word 'run' "
                "used in the same way in the two sentences above?\nAnswer:",
                (" no", " yes"),
                1,
            ),
        ],
    ),
    "sst2": (
        GLUE,
        "sst2",
        ["negative", "positive"],
        [
            {"sentence": "a charming and affecting journey . ", "label": 1, "idx": 0},
            {"sentence": "a boring mess . ", "label": 0, "idx": 1},
        ],
        [
            (
                "a charming and affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:",
                (" negative", " positive"),
                1,
            ),
            ("a boring mess . \nQuestion: Is this sentence positive or negative?\nAnswer:", (" negative", " positive"), 0),
        ],
    ),
}


def _parquet_like(rows: list[dict], label_names: list[str]):
    """A `datasets.Dataset` typed like the Hub's parquet files: strings, int32 fields, a ClassLabel label."""
    feats = {k: datasets.Value("string" if isinstance(v, str) else "int32") for k, v in rows[0].items() if k != "label"}
    feats["label"] = datasets.ClassLabel(names=label_names)
    return datasets.Dataset.from_list(rows, features=datasets.Features(feats))


def _fake_hub(monkeypatch, served: dict[tuple[str, str, str], object]) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(path, name=None, *, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        assert not kwargs, f"unexpected load_dataset arguments {kwargs} (trust_remote_code is gone in datasets >= 4)"
        if (path, name, revision) not in served:
            raise FileNotFoundError(f"Couldn't find '{path}' config {name!r} at revision {revision}")
        return served[(path, name, revision)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("name", sorted(CASES))
def test_hub_source_of_every_builtin_task(monkeypatch, name):
    (repo, revision), config, label_names, rows, expected = CASES[name]
    calls = _fake_hub(monkeypatch, {(repo, config, revision): _parquet_like(rows, label_names)})
    task = get_task(name)
    for split in ["train", "validation"]:  # BoolQ's train split too: only the local copy lacks it
        examples = task.load(split, "hub")
        assert [(e.context, e.choices, e.label) for e in examples] == expected
        assert [e.idx for e in examples] == [r["idx"] for r in rows]
    assert calls == [(repo, config, "train", revision), (repo, config, "validation", revision)]
    values = [str(v) for v in task.label_values]
    if values != ["0", "1"]:  # the Hub's class name of each row is the label value its label word stands for
        assert [label_names[r["label"]] for r in rows] == [values[label] for *_, label in expected]


def test_hub_rows_and_local_files_give_the_same_examples(monkeypatch, data_dir):
    """The official JSONL/TSV files (string/bool labels, WSC spans under `target`) re-encoded the way the
    Hub's parquet files store them give the same Examples: the label encodings line up."""
    from softprompt.tasks.data import load_records

    def hub_row(name: str, rec: dict) -> dict:
        row = dict(rec)
        if name == "wsc":
            row.update(row.pop("target"))
        if name in ("rte", "cb"):
            row["label"] = CASES[name][2].index(row["label"])
        elif name == "sst2" or isinstance(row["label"], bool):
            row["label"] = int(row["label"])
        return row

    for name in sorted(CASES):
        (repo, revision), config, label_names, _, _ = CASES[name]
        task = get_task(name)
        local = list(itertools.islice(load_records(task, "validation", data_dir), 12))
        rows = [hub_row(name, rec) for rec, _ in local]
        _fake_hub(monkeypatch, {(repo, config, revision): _parquet_like(rows, label_names)})
        mine = [task.to_example(rec, where) for rec, where in local]
        hub = task.load("validation", "hub")
        assert [(e.context, e.choices, e.label) for e in hub] == [(e.context, e.choices, e.label) for e in mine], name


def test_hub_failure_is_one_line_naming_repository_and_revision(monkeypatch):
    _fake_hub(monkeypatch, {})
    with pytest.raises(SoftPromptError) as e:
        get_task("rte").load("validation", "hub")
    msg = str(e.value)
    assert "\n" not in msg
    assert "aps/super_glue/rte@3de24cf8022e" in msg and "FileNotFoundError" in msg and "--data-dir" in msg

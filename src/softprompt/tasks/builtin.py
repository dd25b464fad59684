"""The built-in SuperGLUE and GLUE tasks, declared once each.

Templates follow lm-evaluation-harness's SuperGLUE prompts (answer appended after one space).
Descriptions are the English task instructions used for `text` init and as the hard-prompt baseline;
RTE's is the one from the original study.

`--data-dir hub` reads the Hub's parquet copies at pinned commits: `datasets` >= 4 no longer runs the
loading scripts behind the old `super_glue` / `glue` names. What was checked, and from which sources,
is in docs/reliability.md ("Hub sources").
"""

from __future__ import annotations

from softprompt.tasks.base import DataSource, Task


def _copa_context(rec: dict) -> str:
    connector = {"cause": "because", "effect": "therefore"}[rec["question"]]
    return rec["premise"].strip().rstrip(".") + f" {connector}"


def _copa_choices(rec: dict) -> tuple[str, str]:
    def lower_first(s: str) -> str:
        s = s.strip()
        return s[:1].lower() + s[1:]

    return lower_first(rec["choice1"]), lower_first(rec["choice2"])


def _wsc_context(rec: dict) -> str:
    target = rec.get("target", rec)  # official files nest the spans under "target"; the Hub does not
    return (
        f'Passage: {rec["text"]}\nQuestion: In the passage above, does the pronoun "*{target["span2_text"]}*" '
        f'refer to "*{target["span1_text"]}*"?\nAnswer:'
    )


# Parquet files per config (`rte/train-00000-of-00001.parquet`, ...); labels are ClassLabel ints in the
# order of the old script (RTE: entailment, not_entailment; CB: entailment, contradiction, neutral;
# COPA: choice1, choice2; WSC/BoolQ/WiC: False, True); WSC's spans are flat fields, not under "target".
SUPER_GLUE_HUB = "aps/super_glue"
SUPER_GLUE_REVISION = "3de24cf8022e94f4ee4b9d55a6f539891524d646"
# `sst2/{train,validation}-00000-of-00001.parquet`: sentence, label (0 negative, 1 positive), idx.
GLUE_HUB = "nyu-mll/glue"
GLUE_REVISION = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"


def _sg(name: str, hub_name: str | None = None, missing: dict[str, str] | None = None) -> DataSource:
    return DataSource(
        files={"train": f"{name}/train.jsonl", "validation": f"{name}/val.jsonl"},
        hub=(SUPER_GLUE_HUB, hub_name or name),
        hub_revision=SUPER_GLUE_REVISION,
        missing=missing or {},
    )


BUILTIN_TASKS: dict[str, Task] = {
    "rte": Task(
        name="rte",
        description="Does the hypothesis entail, or not entail the premise?",
        template="{premise}\nQuestion: {hypothesis} True or False?\nAnswer:",
        label_words=("True", "False"),
        label_values=("entailment", "not_entailment"),
        source=_sg("rte"),
    ),
    "cb": Task(
        name="cb",
        description="Does the premise entail, contradict, or neither entail nor contradict the hypothesis?",
        template="{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:",
        label_words=("True", "False", "Neither"),
        label_values=("entailment", "contradiction", "neutral"),
        source=_sg("cb"),
        metric="f1_macro",
    ),
    "copa": Task(
        name="copa",
        description="Choose the more plausible cause or effect of the premise.",
        template="{premise}",
        label_words=("choice1", "choice2"),
        label_values=(0, 1),
        source=_sg("copa"),
        context_fn=_copa_context,
        choices_fn=_copa_choices,
    ),
    "wsc": Task(
        name="wsc",
        description="Does the pronoun refer to the noun? Answer yes or no.",
        template="{text}",
        label_words=("no", "yes"),
        label_values=(False, True),
        source=_sg("wsc", "wsc.fixed"),
        context_fn=_wsc_context,
    ),
    "boolq": Task(
        name="boolq",
        description="Read the passage and answer the question with yes or no.",
        template="{passage}\nQuestion: {question}?\nAnswer:",
        label_words=("no", "yes"),
        label_values=(False, True),
        source=_sg(
            "boolq",
            missing={"train": "the official BoolQ train split is not in the local data (see PROVENANCE.md)"},
        ),
    ),
    "wic": Task(
        name="wic",
        description="Is the word used with the same meaning in both sentences? Answer yes or no.",
        template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Is the word '{word}' used in the "
        "same way in the two sentences above?\nAnswer:",
        label_words=("no", "yes"),
        label_values=(False, True),
        source=_sg("wic"),
    ),
    "sst2": Task(
        name="sst2",
        description="Is the sentiment of this movie review positive or negative?",
        template="{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        label_words=("negative", "positive"),
        label_values=(0, 1),
        source=DataSource(
            files={"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"},
            hub=(GLUE_HUB, "sst2"),
            hub_revision=GLUE_REVISION,
        ),
    ),
}

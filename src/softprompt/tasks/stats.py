"""Split sizes, label balance and majority-class accuracy of tasks (`softprompt tasks --stats`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from softprompt.errors import SoftPromptError
from softprompt.tasks import get_task
from softprompt.tasks.base import majority_label
from softprompt.tasks.data import split_file


def task_stats(names: list[str], data_dir: str | Path | None = None) -> list[dict]:
    """A row per task. A split that is not there (no file here, BoolQ's local train split, the Hub unreachable) is
    `n/a` with a note; a split whose file is there but does not load (a malformed line, a bad label, no records) is
    a data error, raised whole (the CLI: one line, exit 2) rather than cut into a table cell."""
    rows = []
    for name in names:
        task = get_task(name)
        row: dict = {"task": task.name}
        train = None
        for split in ("train", "validation"):
            try:
                local = split_file(task, split, data_dir)  # None: the split comes from the Hub
            except SoftPromptError as e:
                _not_available(row, split, e)
                continue
            try:
                ex = task.load(split, data_dir)
            except SoftPromptError as e:
                if local is not None:
                    raise
                _not_available(row, split, e)
                continue
            row[split] = len(ex)
            if split == "train":
                train = ex
            else:
                counts = Counter(e.label for e in ex)
                row["val labels"] = "/".join(str(counts.get(i, 0)) for i in range(task.num_classes))
                # Published majority baselines predict the most frequent validation label.
                row["majority (val)"] = round(100 * max(counts.values()) / len(ex), 1)
                if train is not None:
                    lab = majority_label(train)
                    row["majority (train label)"] = round(100 * counts.get(lab, 0) / len(ex), 1)
        rows.append(row)
    return rows


def _not_available(row: dict, split: str, error: SoftPromptError) -> None:
    row[split] = "n/a"
    row.setdefault("note", str(error).split(": ", 1)[-1][:60])

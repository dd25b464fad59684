"""`softprompt` never prints a traceback for a fault of the inputs or the environment: every fault in
docs/reliability.md (and the ones this file adds) is driven through the command line, and each must exit 2
with exactly one `softprompt: error: ...` line on stderr.

Each case runs `softprompt.cli.main` in its own process, forked from one driver process that imported the
libraries once (a fresh `python -m softprompt.cli` costs seconds of imports per case); an uncaught exception
in a case prints its traceback exactly as the real entry point would. `test_the_real_entry_point_agrees`
runs a few cases through `python -m softprompt.cli` as well. Faults of the environment that cannot be
produced here (a full disk, out of memory) are injected in the case's process before `main` runs. Signals
(Ctrl-C, SIGTERM, whose last stderr line is the "interrupted" message) are driven in test_preemption.py
and test_reliability.py; Ray worker faults in test_ray_executor.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt.locks import directory_lock
from softprompt.model.prompt import PromptInit, SoftPrompt
from softprompt.training import train
from tests.conftest import tiny_config
from tests.test_inputs import TASK

DRIVER = r"""
import json, os, sys, traceback
import torch, transformers  # noqa: F401  (imported once, before forking)
import softprompt.cli, softprompt.training, softprompt.study, softprompt.training.baseline_runs, softprompt.peft_interop  # noqa: F401
import softprompt.analysis.neighbors, softprompt.analysis.geometry, softprompt.analysis.transfer  # noqa: F401

FAULTS = {
    # the disk fills up while the named file is being written (every writer goes through os.replace)
    "disk_full": lambda name: _replace_fails(name, 28, "No space left on device"),
    "no_permission": lambda name: _replace_fails(name, 13, "Permission denied"),
    "out_of_memory": lambda name: _oom(),
    "env": lambda setting: os.environ.__setitem__(*setting.split("=", 1)),  # an environment variable set for the case
}

def _replace_fails(name, code, text):
    real = os.replace
    def replace(src, dst):
        if os.path.basename(str(dst)) == name:
            raise OSError(code, text)
        return real(src, dst)
    os.replace = replace

def _oom():
    import softprompt.training.step as t
    def step(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    t.TrainStep.forward_backward = step

for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        code = 1
        try:
            if case.get("fault"):
                kind, _, arg = case["fault"].partition(":")
                FAULTS[kind](arg)
            code = softprompt.cli.main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"premise": "The cat sat.", "hypothesis": "A cat.", "label": "entailment"}
BAD = {"premise": "The dog ran.", "hypothesis": "A dog.", "label": "not_entailment"}


def _data_dir(root: Path, train_rows) -> Path:
    _jsonl(root / "rte" / "train.jsonl", train_rows)
    _jsonl(root / "rte" / "val.jsonl", [GOOD, BAD])
    return root


def _task_file(root: Path, body: str, train_text: str = "text,label\na good film,positive\na bad film,negative\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(train_text)
    (root / "val.csv").write_text("text,label\nfine,positive\nawful,negative\n")
    (root / "task.toml").write_text(body)
    return root / "task.toml"


TASK_TOML = TASK.replace("# a comment\n", "").replace(".jsonl", ".csv")


STUDY_TOML = """[study]
name = "faults"
model = "{model}"
tasks = ["rte"]
seeds = [0]
data_dir = "{data}"
[train]
epochs = 1
tokens = 2
compute_dtype = "float32"
max_length = 128
{extra}
"""


@pytest.fixture
def world(tmp_path, tiny_llama, tiny_model_dir, toy_data, interrupt_at):
    """Runs, adapters, data folders and configs holding every fault, built in-process (fast)."""
    w = {"tmp": tmp_path, "model": tiny_model_dir, "data": toy_data}
    # a run naming the model it was trained on (eval, importance and describe take it from run.json)
    train(tiny_config(toy_data, model=str(tiny_model_dir)), tmp_path / "done", backbone=tiny_llama, progress=False)
    w["done"] = tmp_path / "done"
    for name, edit in {
        "format99": lambda r: dict(r, format=99),
        "corrupt": None,
        "truncated": "truncate",
        "swapped": "swap",
        "nan": "nan",
    }.items():
        d = tmp_path / name
        train(tiny_config(toy_data), d, backbone=tiny_llama, progress=False)
        if callable(edit):
            (d / "run.json").write_text(json.dumps(edit(json.loads((d / "run.json").read_text()))))
        elif name == "corrupt":
            (d / "run.json").write_text("{not json")
        elif edit == "truncate":
            raw = (d / "prompt.safetensors").read_bytes()
            (d / "prompt.safetensors").write_bytes(raw[:-7])
        elif edit == "swap":
            SoftPrompt(torch.randn(5, 32), PromptInit("random")).save(d / "prompt.safetensors")
        elif edit == "nan":
            SoftPrompt(torch.full((3, 32), float("nan")), PromptInit("random")).save(d / "prompt.safetensors")
    # a run interrupted in its second epoch, whose data then changed
    data2 = _data_dir(tmp_path / "data2", [GOOD, BAD] * 4)
    interrupt_at(3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data2, epochs=2, model=str(tiny_model_dir)), tmp_path / "stale", backbone=tiny_llama, progress=False)
    interrupt_at(None)
    _jsonl(data2 / "rte" / "train.jsonl", [BAD, GOOD] * 4)
    w["data2"] = data2
    # PEFT adapters: a pickle, a wrong peft_type, and one of width 8 (imported: a run of another hidden size)
    from softprompt.peft_interop import import_peft

    for name, cfg in {"pickled": None, "lora": {"peft_type": "LORA"}, "width8": {}}.items():
        a = tmp_path / "adapters" / name
        a.mkdir(parents=True)
        conf = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 8, **(cfg or {})}
        (a / "adapter_config.json").write_text(json.dumps(conf))
        if name == "pickled":
            torch.save({"prompt_embeddings": torch.zeros(2, 8)}, a / "adapter_model.bin")
        else:
            from safetensors.torch import save_file

            save_file({"prompt_embeddings": torch.zeros(2, 8)}, str(a / "adapter_model.safetensors"))
    import_peft(
        tmp_path / "adapters" / "width8",
        tmp_path / "width8",
        task="rte",
        settings={"max_length": 128, "compute_dtype": "float32"},
    )
    (tmp_path / "a-file").write_text("not a directory")
    # issue 30: a checkpoint altered in place since run.json recorded its digest; a user's folder as --peft
    interrupt_at(5)
    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_config(toy_data, epochs=2, model=str(tiny_model_dir)), tmp_path / "altered", backbone=tiny_llama, progress=False
        )
    interrupt_at(None)
    ckpt = bytearray((tmp_path / "altered" / "checkpoint.safetensors").read_bytes())
    ckpt[-2] ^= 0x10
    (tmp_path / "altered" / "checkpoint.safetensors").write_bytes(bytes(ckpt))
    (tmp_path / "users-adapter").mkdir()
    (tmp_path / "users-adapter" / "README.md").write_text("# mine\n")
    torch.save({"prompt_embeddings": torch.zeros(2, 8)}, tmp_path / "users-adapter" / "adapter_model.bin")
    return w


def _cases(w) -> list[tuple[str, list[str], str, str | None]]:
    """(name, argv, what the error line must contain, injected fault)."""
    tmp, model, data = w["tmp"], str(w["model"]), str(w["data"])
    m = ["--model", model, "--compute-dtype", "float32", "--max-length", "128", "--quiet"]
    t = ["train", "--task", "rte", *m, "--data-dir"]

    def out(name):
        return ["--out", str(tmp / "out" / name)]

    def data_with(name, rows):
        return str(_data_dir(tmp / "bad" / name, rows))

    def task_with(name, body, train_text=None):
        return str(_task_file(tmp / "tasks" / name, body, *([train_text] if train_text else [])))

    def study_with(name, extra="", tasks='["rte"]'):
        p = tmp / "studies" / f"{name}.toml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(STUDY_TOML.format(model=model, data=data, extra=extra).replace('["rte"]', tasks))
        return str(p)

    nonutf8 = tmp / "bad" / "nonutf8" / "rte"
    nonutf8.mkdir(parents=True)
    (nonutf8 / "train.jsonl").write_bytes(b'{"premise": "caf\xe9", "hypothesis": "x", "label": "entailment"}\n')
    (nonutf8 / "val.jsonl").write_text(json.dumps(GOOD) + "\n")
    dir_as_file = tmp / "bad" / "dirfile"
    _data_dir(dir_as_file, [GOOD])
    (dir_as_file / "rte" / "val.jsonl").unlink()
    (dir_as_file / "rte" / "val.jsonl").mkdir()
    no_files = tmp / "bad" / "nofiles"
    (no_files / "rte").mkdir(parents=True)
    run = ["--run"]
    clash = task_with("clash", TASK_TOML.replace('name = "toy"', 'name = "rte"'))  # a task file declaring a built-in's name
    altered = ["--out", str(tmp / "altered"), "--resume"]
    loop_task = task_with("loop", TASK_TOML.replace("train.csv", "loop.csv"))
    (tmp / "tasks" / "loop" / "loop.csv").symlink_to("loop.csv")
    return [
        # --- documented faults (docs/reliability.md)
        ("unknown task", ["train", "--task", "nope", *out("a")], "unknown task 'nope'", None),
        ("missing data folder", [*t, str(tmp / "no-such-folder"), *out("b")], "is not a directory", None),
        ("missing data file", [*t, str(no_files), *out("b2")], "rte/train.jsonl not found", None),
        ("invalid JSON line", [*t, data_with("json", [GOOD, "{oops"]), *out("c")], "train.jsonl:2: invalid JSON", None),
        ("non-object line", [*t, data_with("obj", [GOOD, "[1, 2]"]), *out("d")], "expected a JSON object", None),
        ("non-UTF-8", [*t, str(nonutf8.parent), *out("e")], "not UTF-8 (byte 0xe9", None),
        (
            "missing field",
            [*t, data_with("field", [GOOD, {"premise": "x", "label": "entailment"}]), *out("f")],
            "missing field 'hypothesis'",
            None,
        ),
        (
            "label outside words",
            [*t, data_with("label", [GOOD, dict(GOOD, label="maybe")]), *out("g")],
            "label 'maybe' is not one of",
            None,
        ),
        ("empty split", [*t, data_with("empty", []), *out("h")], "the train split is empty", None),
        (
            "csv wrong delimiter",
            ["train", "--task", task_with("tsv", TASK_TOML, "text\tlabel\nok\tpositive\n"), *m, *out("i")],
            "wrong delimiter?",
            None,
        ),
        (
            "csv column count",
            ["train", "--task", task_with("cols", TASK_TOML, "text,label\na,b,c\n"), *m, *out("j")],
            "3 columns, the header has 2",
            None,
        ),
        ("boolq train absent", ["train", "--task", "boolq", *m, "--data-dir", data, *out("k")], "no train split", None),
        (
            "task toml unknown key",
            ["train", "--task", task_with("key", TASK_TOML + "colour = 1\n"), *m, *out("l")],
            "unknown key",
            None,
        ),
        ("task toml invalid", ["train", "--task", task_with("toml", "name = \n"), *m, *out("m")], "invalid TOML", None),
        (
            "task toml template",
            ["train", "--task", task_with("tpl", TASK_TOML.replace("{text}", "{label}")), *m, *out("n")],
            "uses the label field",
            None,
        ),
        (
            "study unknown key",
            ["study", study_with("typo", "epoch = 3"), "--out", str(tmp / "s1")],
            "unknown key(s) ['epoch']",
            None,
        ),
        (
            "study unknown task",
            ["study", study_with("task", tasks='["nope"]'), "--out", str(tmp / "s2")],
            "unknown task 'nope'",
            None,
        ),
        ("study out URL", ["study", study_with("url"), "--out", "s3://bucket/x"], "URLs", None),
        (
            "ray flags",
            ["study", study_with("ray"), "--out", str(tmp / "s3"), "--cpus-per-run", "2"],
            "applies to --executor ray",
            None,
        ),
        ("bad config value", [*t, data, "--tokens", "0", *out("o")], "tokens must be at least 1", None),
        (
            "resume another config",
            [*t, data, "--tokens", "5", "--epochs", "1", "--batch-size", "4", "--lr", "0.1", "--out", str(w["done"]), "--resume"],
            "different config",
            None,
        ),
        (
            "out holds a run",
            [*t, data, "--tokens", "3", "--epochs", "1", "--batch-size", "4", "--lr", "0.1", "--out", str(w["done"])],
            "already holds a complete run",
            None,
        ),
        (
            "diverged",
            [*t, data, "--lr", "1e30", "--optimizer", "adam", "--warmup", "0", "--schedule", "constant", *out("p")],
            "diverged",
            None,
        ),
        ("hub unreachable", [*t, "hub", *out("q")], "could not load aps/super_glue/rte", None),
        ("run format", ["eval", *run, str(tmp / "format99"), *m], "run format 99", None),
        ("corrupt run.json", ["eval", *run, str(tmp / "corrupt"), *m], "invalid JSON at line 1", None),
        ("truncated prompt", ["eval", *run, str(tmp / "truncated"), *m], "does not match", None),
        ("NaN prompt", ["eval", *run, str(tmp / "nan"), *m], "does not match", None),
        (
            "hidden size",
            ["eval", *run, str(tmp / "width8"), *m, "--data-dir", data],
            "hidden size 8 but the model's hidden size is 32",
            None,
        ),
        (
            "pickled adapter",
            ["import-peft", str(tmp / "adapters" / "pickled"), "--out", str(tmp / "imp1")],
            "is a pickle file",
            None,
        ),
        (
            "malformed adapter",
            ["import-peft", str(tmp / "adapters" / "lora"), "--out", str(tmp / "imp2")],
            "field 'peft_type' is 'LORA'",
            None,
        ),
        # --- faults this file adds: ownership, stale inputs, artifacts, filesystem, environment
        ("locked out", [*t, data, *out("locked")], "is being written by another softprompt process (pid", None),
        (
            "inputs changed",
            [
                *t,
                str(w["data2"]),
                "--tokens",
                "3",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--lr",
                "0.1",
                "--out",
                str(tmp / "stale"),
                "--resume",
            ],
            "train data changed since this run started",
            None,
        ),
        (
            "prompt swapped",
            ["neighbors", str(tmp / "swapped"), "--out", str(tmp / "n1"), *m],
            "prompt.safetensors does not match",
            None,
        ),
        (
            "importance of a swapped prompt",
            ["importance", str(tmp / "swapped"), "--out", str(tmp / "i1"), *m],
            "prompt.safetensors does not match",
            None,
        ),
        (
            "disk full in importance",
            ["importance", str(w["done"]), "--out", str(tmp / "i2"), "--data-dir", data, "--max-eval", "2", *m],
            "importance.json: No space left on device",
            "disk_full:importance.json",
        ),
        (
            "describe beyond the depth",
            ["describe", str(w["done"]), "--out", str(tmp / "dsc1"), "--layers", "0,7", *m],
            "patch layer(s) [7] out of range",
            None,
        ),
        (
            "disk full in describe",
            ["describe", str(w["done"]), "--out", str(tmp / "dsc2"), "--samples", "0", "--max-new-tokens", "2", *m],
            "describe.json: No space left on device",
            "disk_full:describe.json",
        ),
        ("out is a file", [*t, data, "--out", str(tmp / "a-file")], "exists and is not a directory", None),
        ("out not creatable", [*t, data, "--out", "/sys/softprompt-fault/run"], "cannot create it", None),
        ("data file is a directory", [*t, str(dir_as_file), *out("r")], "val.jsonl is not a file", None),
        ("no such device", [*t, data, "--device", "cuda:3", *out("s")], "device 'cuda:3'", None),
        (
            "study wrong type",
            ["study", study_with("type", "weight_decay = 'none'"), "--out", str(tmp / "s4")],
            "weight_decay must be a number",
            None,
        ),
        (
            "study analysis metric",
            ["study", study_with("metric", "[analysis]\nmetric = 'euclid'"), "--out", str(tmp / "s5")],
            "metric: unknown 'euclid'",
            None,
        ),
        ("max length too small", [*t, data, "--max-length", "6", *out("u")], "leaves no room", None),
        (
            "disk full in train",
            [*t, data, "--epochs", "2", *out("v")],
            "checkpoint.safetensors: No space left on device",
            "disk_full:checkpoint.safetensors",
        ),
        (
            "disk full in a report",
            ["geometry", str(w["done"]), "--out", str(tmp / "g1")],
            "geometry.json: No space left on device",
            "disk_full:geometry.json",
        ),
        (
            "permission denied",
            ["export", str(w["done"]), "--peft", str(tmp / "adapter-out")],
            "adapter_config.json: Permission denied",
            "no_permission:adapter_config.json",
        ),
        ("export onto a file", ["export", str(w["done"]), "--peft", str(tmp / "a-file")], "exists and is not a directory", None),
        (
            "import onto a run",
            ["import-peft", str(tmp / "adapters" / "width8"), "--out", str(w["done"])],
            "already holds a run",
            None,
        ),
        ("out of memory", [*t, data, *out("w")], "out of memory (OutOfMemoryError: CUDA out of memory", "out_of_memory"),
        # --- issue 30: integrity of what a run resumes from, names that cannot collide, arguments checked up front
        (
            "checkpoint altered",
            [*t, data, "--tokens", "3", "--epochs", "2", "--batch-size", "4", "--lr", "0.1", *altered],
            "checkpoint.safetensors does not match",
            None,
        ),
        (
            "study task names collide",
            ["study", study_with("names", tasks=f'["rte", "{clash}"]'), "--out", str(tmp / "s6")],
            "declares the name 'rte' of the built-in task 'rte'",
            None,
        ),
        (
            "export into a user's folder",
            ["export", str(w["done"]), "--peft", str(tmp / "users-adapter")],
            "holds files softprompt did not export (README.md, adapter_model.bin)",
            None,
        ),
        (
            "import of another width",
            ["import-peft", str(tmp / "adapters" / "width8"), "--out", str(tmp / "imp3"), "--model", model],
            "the prompt is 8 wide, but model",
            None,
        ),
        ("generate no new tokens", ["generate", "hi", "--model", model, "--max-new-tokens", "0"], "--max-new-tokens", None),
        ("generate negative temperature", ["generate", "hi", "--model", model, "--temperature", "-1"], "--temperature", None),
        # --- issue 37: silent wrong results, hangs and tracebacks
        (
            "neighbors k beyond the vocabulary",
            ["neighbors", str(w["done"]), "--k", "100000", "--out", str(tmp / "nk"), *m],
            "--k 100000: expected a whole number from 1 to the vocabulary size, ",
            None,
        ),
        ("neighbors k of 0", ["neighbors", str(w["done"]), "--k", "0", "--out", str(tmp / "nk0"), *m], "--k 0: expected", None),
        (
            "template reads an attribute",
            ["train", "--task", task_with("attr", TASK_TOML.replace("{text}", "{text.__class__}")), *m, *out("x1")],
            "template: field {text.__class__} is not allowed: a template field is a plain name",
            None,
        ),
        (
            "template pads its input",
            ["tasks", "--stats", "--task", task_with("pad", TASK_TOML.replace("{text}", "{text!r:>99999999}"))],
            "template: field {text!r:>99999999} is not allowed",
            None,
        ),
        (
            "data file is a symlink loop",
            ["train", "--task", loop_task, *m, *out("x2")],
            "data.train: data file " + str(tmp / "tasks" / "loop" / "loop.csv") + " is a symbolic link loop",
            None,
        ),
        (
            "eval in another layout",
            ["eval", "--run", str(w["done"]), "--prompt-format", "chat", "--data-dir", data],
            "--prompt-format chat: run " + str(w["done"]) + " was trained in the plain prompt format",
            None,
        ),
        (
            "describe no layers",
            ["describe", str(w["done"]), "--out", str(tmp / "dsc3"), "--layers", "", *m],
            "--layers '': expected comma-separated layer indices",
            None,
        ),
        (
            "describe a long text",
            ["describe", "--text", "word " * 5000, "--out", str(tmp / "dsc4"), *m],
            "--text is 5,000 words long",
            None,
        ),
        (
            "unknown host malloc",
            ["tasks"],
            "SOFTPROMPT_HOST_MALLOC='defualt' is not a known setting",
            "env:SOFTPROMPT_HOST_MALLOC=defualt",
        ),
        (
            "mlflow server unreachable",
            [*t, data, "--report-to", "mlflow", *out("x3")],
            "report_to mlflow: MLFLOW_TRACKING_URI=http://127.0.0.1:1 cannot be reached",
            "env:MLFLOW_TRACKING_URI=http://127.0.0.1:1",
        ),
        (
            "tasks --stats on bad data",
            ["tasks", "--stats", "--task", "rte", "--data-dir", data_with("stats", [GOOD, "{oops"])],
            "train.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
            None,
        ),
    ]


def test_every_fault_is_one_line_and_never_a_traceback(world, tmp_path):
    cases = _cases(world)
    if not Path("/sys/kernel").exists():
        cases = [c for c in cases if c[0] != "out not creatable"]
    logs = tmp_path / "logs"
    logs.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    failures = []
    try:
        for i, (name, argv, expected, fault) in enumerate(cases):
            case = {
                "argv": argv,
                "cwd": str(tmp_path),
                "stdout": str(logs / f"{i}.out"),
                "stderr": str(logs / f"{i}.err"),
                "fault": fault,
            }
            if name == "locked out":
                with directory_lock(tmp_path / "out" / "locked"):
                    rc = _ask(driver, case)
            else:
                rc = _ask(driver, case)
            err = (logs / f"{i}.err").read_text().strip()
            lines = err.splitlines()
            ok = rc == 2 and len(lines) == 1 and lines[0].startswith("softprompt: error: ") and expected in lines[0]
            if not ok or "Traceback" in err:
                failures.append(f"{name}: rc {rc}\n{err[-1500:]}")
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
    assert not failures, "\n\n".join(failures)
    # what the faults left behind: nothing half-written
    assert not list(tmp_path.rglob(".*.tmp"))
    assert json.loads((tmp_path / "out" / "v" / "run.json").read_text())["status"] == "failed"
    assert json.loads((tmp_path / "out" / "w" / "run.json").read_text())["status"] == "failed"
    assert json.loads((tmp_path / "stale" / "run.json").read_text())["status"] == "interrupted"
    # refused before --out was made: no empty folder left behind
    assert not any((tmp_path / name).exists() for name in ("nk", "nk0", "dsc3", "dsc4", "out/x1", "out/x2", "out/x3"))


def _ask(driver, case) -> int:
    driver.stdin.write(json.dumps(case) + "\n")
    driver.stdin.flush()
    return json.loads(driver.stdout.readline())["rc"]


def test_the_real_entry_point_agrees(world, tmp_path):
    """A few of the cases through `python -m softprompt.cli` itself, in parallel."""
    picked = {"out is a file", "inputs changed", "truncated prompt"}
    cases = [c for c in _cases(world) if c[0] in picked]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        (
            name,
            expected,
            subprocess.Popen(
                [sys.executable, "-m", "softprompt.cli", *argv],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for name, argv, expected, _ in cases
    ]
    for name, expected, proc in procs:
        err = proc.communicate(timeout=300)[1].strip()
        assert proc.returncode == 2 and err.count("\n") == 0 and expected in err and "Traceback" not in err, (name, err)

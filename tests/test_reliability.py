"""Faults: SIGKILL/SIGINT/SIGTERM at random points resume to the bit-identical result; tampered artifacts are refused;
property tests on templating, truncation and label mapping."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from softprompt.data.batching import collate, encode_examples
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import SoftPrompt
from softprompt.runs.directory import load_run
from softprompt.scoring import batch_choice_scores
from softprompt.tasks import get_task
from softprompt.tasks.base import Example


def _checkpoint_step(path) -> int | None:
    """The optimiser step a checkpoint file holds (None: none yet, or replaced while read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads((f.metadata() or {})["state"])["optimizer_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_cmd(model_dir, data, out, *extra):
    return [
        sys.executable,
        "-m",
        "softprompt.cli",
        "train",
        "--task",
        "rte",
        "--model",
        str(model_dir),
        "--data-dir",
        str(data),
        "--tokens",
        "3",
        "--epochs",
        "80",
        "--batch-size",
        "2",
        "--lr",
        "0.1",
        "--compute-dtype",
        "float32",
        "--checkpoint-every",
        "1",
        "--max-length",
        "128",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def held_process(
    cmd, point: str, hold_file, *, stderr=subprocess.DEVNULL, timeout: float = 300.0, env: dict | None = None
) -> subprocess.Popen:
    """`cmd` started with the test hook SOFTPROMPT_TEST_HOLD=`point` (`softprompt.preemption.hold_point`), returned
    once it waits there: a signal sent now lands at that instant, on any machine, idle or loaded (no race with a run
    that may already be over). `hold_file` must not exist yet; the process creates it when it starts waiting."""
    env = dict(env or os.environ, OMP_NUM_THREADS="1", SOFTPROMPT_TEST_HOLD=point, SOFTPROMPT_TEST_HOLD_FILE=str(hold_file))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not hold_file.exists():
        time.sleep(0.01)
    if not hold_file.exists():
        proc.kill()
        err = proc.communicate()[1] or ""
        raise AssertionError(f"{cmd[3:5]} never reached {point} (exit {proc.returncode}): {err[-2000:]}")
    return proc


def _signalled(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    err = proc.communicate(timeout=300)[1] or ""
    return proc.returncode, err


def test_killed_runs_resume_to_identical_result(tmp_path, tiny_model_dir, toy_data):
    """SIGKILL, SIGINT and SIGTERM land mid-run at chosen instants (a training step, the middle of a checkpoint's
    write), each resume continues from where the last stopped, and the end result is bit-identical. The instants are
    set by the test hook, so the signals never race a run that is already over (fast idle machines)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(tiny_model_dir, toy_data, ref), check=True, env=env, capture_output=True, timeout=300)
    cut = tmp_path / "cut"
    rng = random.Random(0)
    kills = [  # (signal, where): 480 steps in all, a checkpoint after each; every attempt stops at most 30 steps in
        (signal.SIGKILL, "train-batch"),
        (signal.SIGINT, "train-batch"),
        (signal.SIGTERM, "train-batch"),
        (signal.SIGKILL, "checkpoint-write"),  # the new file in place, run.json still listing both digests
        (signal.SIGTERM, "checkpoint-write"),  # the write completes, then the run stops
        (signal.SIGINT, "evaluate-batch"),  # an epoch end's evaluation
    ]
    step = 0  # the checkpoint's optimiser step before each attempt
    for attempt, (sig, point) in enumerate(kills):
        extra = ["--resume"] if attempt else []
        n = rng.randint(2, 30)
        proc = held_process(
            _train_cmd(tiny_model_dir, toy_data, cut, *extra), f"{point}:{n}", tmp_path / f"hold{attempt}", stderr=subprocess.PIPE
        )
        code, err = _signalled(proc, sig)
        status = json.loads((cut / "run.json").read_text())["status"]
        after = _checkpoint_step(cut / "checkpoint.safetensors")
        assert after is not None and after > step, (attempt, after, step)  # killed mid-run, progress kept
        if point == "train-batch":  # held before its n-th step: n - 1 steps done, each checkpointed
            assert after == step + n - 1, (attempt, after, step, n)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL and status == "running"
        else:
            assert (code, status) == ({signal.SIGINT: 130, signal.SIGTERM: 143}[sig], "interrupted"), (code, err[-2000:])
            assert (
                err.strip()
                .splitlines()[-1]
                .endswith(f"progress was checkpointed at step {after} in {cut}: rerun with --resume to continue")
            ), err[-2000:]
            assert "Traceback" not in err
        step = after
    subprocess.run(_train_cmd(tiny_model_dir, toy_data, cut, "--resume"), check=True, env=env, capture_output=True, timeout=300)
    assert load_run(cut).complete
    a = load_file(str(ref / "prompt.safetensors"))
    b = load_file(str(cut / "prompt.safetensors"))
    assert torch.equal(a["prompt"], b["prompt"])
    ref_losses = [json.loads(x)["train_loss"] for x in (ref / "metrics.jsonl").read_text().splitlines()]
    cut_losses = [json.loads(x)["train_loss"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert ref_losses == cut_losses
    # no temporary files left behind
    assert not [p for p in cut.iterdir() if p.name.endswith(".tmp")]


def test_tampered_artifacts_are_refused(tmp_path):
    p = SoftPrompt(torch.randn(3, 8), init=__import__("softprompt.model.prompt", fromlist=["PromptInit"]).PromptInit("random"))
    p.save(tmp_path / "p.safetensors")
    raw = bytearray((tmp_path / "p.safetensors").read_bytes())
    (tmp_path / "trunc.safetensors").write_bytes(bytes(raw[: len(raw) - 7]))
    with pytest.raises(SoftPromptError, match="not a readable safetensors"):
        SoftPrompt.load(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(SoftPromptError, match="not a readable safetensors"):
        SoftPrompt.load(tmp_path / "garbage.safetensors")
    nan = SoftPrompt(torch.full((2, 8), float("nan")), init=p.init)
    nan.save(tmp_path / "nan.safetensors")
    with pytest.raises(SoftPromptError, match="NaN"):
        SoftPrompt.load(tmp_path / "nan.safetensors")


def test_run_format_mismatch_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"format": 99, "status": "complete", "config": {"task": "rte"}}))
    with pytest.raises(SoftPromptError, match="run format 99"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(SoftPromptError, match="invalid JSON at line 1"):
        load_run(tmp_path / "run")


def test_pickled_peft_adapter_refused(tmp_path):
    from softprompt.peft_interop import import_peft

    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 4}))
    torch.save({"prompt_embeddings": torch.zeros(2, 4)}, d / "adapter_model.bin")
    with pytest.raises(SoftPromptError, match="pickle"):
        import_peft(d, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    import_peft(d, tmp_path / "run", allow_pickle=True)  # explicit opt-in; still loaded with weights_only=True
    assert load_run(tmp_path / "run").prompt().weight.shape == (2, 4)


# ----------------------------------------------------------------------------- properties

WORDS = st.text(alphabet="abcdefghij tTF?.:\n", min_size=1, max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    context=WORDS,
    answer=st.text(alphabet="abcxyz ", min_size=1, max_size=30).map(lambda s: " " + s),
    n_prompt=st.integers(0, 20),
    max_length=st.integers(40, 120),
)
def test_truncation_never_cuts_answer_or_prompt(tiny_tokenizer, context, answer, n_prompt, max_length):
    ex = Example(context, (answer, " no"), 0)
    hard = "Does the hypothesis entail"
    try:
        enc = encode_examples([ex], tiny_tokenizer, n_prompt=n_prompt, hard_prompt=hard, max_length=max_length)[0]
    except SoftPromptError:
        return  # no room at all is refused, never silently cut
    ans = tiny_tokenizer(answer, add_special_tokens=False)["input_ids"]
    hard_ids = tiny_tokenizer(hard + "\n", add_special_tokens=False)["input_ids"]
    ctx = tiny_tokenizer(context, add_special_tokens=False)["input_ids"]
    for row in enc.rows:
        assert len(row.ids) + n_prompt <= max_length
        assert row.ids[: len(hard_ids)] == hard_ids
    targets = sorted((pos, tok) for r in enc.rows for pos, tok, k in r.targets if k == 0)
    assert [t for _, t in targets] == ans
    kept = len(ctx) - enc.truncated
    assert kept >= 1 and enc.rows[0].ids[len(hard_ids) : len(hard_ids) + kept] == ctx[enc.truncated :]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contexts=st.lists(WORDS, min_size=2, max_size=5), seed=st.integers(0, 1000))
def test_batched_and_unbatched_scores_agree(tiny_llama, contexts, seed):
    torch.manual_seed(seed)
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    prompt = torch.randn(2, model.config.hidden_size) * 0.1
    exs = [Example(c, (" True", " the cat sat"), 0) for c in contexts]
    enc = encode_examples(exs, tok, n_prompt=2, max_length=256)
    together = batch_choice_scores(model, prompt, collate(enc, tok.pad_token_id))
    for i, e in enumerate(enc):
        alone = batch_choice_scores(model, prompt, collate([e], tok.pad_token_id))
        torch.testing.assert_close(together[i, :2], alone[0, :2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["rte", "cb", "copa", "wsc", "boolq", "wic", "sst2"])
def test_label_mapping_is_a_bijection(name):
    task = get_task(name)
    idx = [task.label_index(v, "test") for v in task.label_values]
    assert sorted(idx) == list(range(task.num_classes))
    assert len(set(task.label_words)) == task.num_classes


def test_trust_remote_code_off_by_default(tmp_path, monkeypatch):
    import softprompt.model.backbones as bb

    seen = {}

    def fake(name, **kw):
        seen.setdefault("calls", []).append(kw.get("trust_remote_code"))
        raise OSError("not found")

    monkeypatch.setattr(bb.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(SoftPromptError):
        bb.load_backbone("someone/some-model")
    with pytest.raises(SoftPromptError):
        bb.load_backbone("someone/some-model", trust_remote_code=True)
    assert seen["calls"] == [False, True]


def test_killed_study_resumes_to_identical_result(tmp_path, tiny_model_dir, toy_data):
    """SIGKILL/SIGINT/SIGTERM a whole `softprompt study` at chosen instants (a training step, a checkpoint's write,
    an evaluation, between units); re-running it finishes with the same prompts and numbers as an uninterrupted study."""
    from tests.test_study import CONFIG

    cfg = tmp_path / "study.toml"
    cfg.write_text(
        CONFIG.format(model=tiny_model_dir, data=toy_data, methods='["majority", "no_prompt"]')
        .replace("epochs = 2", "epochs = 60")
        .replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "softprompt.cli", "study", str(cfg), "--quiet", "--out"]
    subprocess.run([*cmd, str(tmp_path / "ref")], check=True, env=env, capture_output=True, timeout=600)
    out = tmp_path / "cut"
    kills = [
        (signal.SIGKILL, "train-batch:40"),
        (signal.SIGINT, "checkpoint-write:9"),
        (signal.SIGTERM, "evaluate-batch:5"),
        (signal.SIGTERM, "unit:2"),
    ]
    for attempt, (sig, point) in enumerate(kills):
        proc = held_process([*cmd, str(out)], point, tmp_path / f"hold{attempt}", stderr=subprocess.PIPE)
        code, err = _signalled(proc, sig)
        assert code == {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err[-2000:]
        assert not (out / "report.html").exists()  # stopped mid-study
        if sig != signal.SIGKILL:
            assert "progress was kept in" in err.strip().splitlines()[-1] and "Traceback" not in err, err[-2000:]
    r = subprocess.run([*cmd, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for seed in (0, 1):
        a = load_file(str(tmp_path / "ref" / "runs" / f"rte-s{seed}" / "prompt.safetensors"))["prompt"]
        b = load_file(str(out / "runs" / f"rte-s{seed}" / "prompt.safetensors"))["prompt"]
        assert torch.equal(a, b), seed
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    assert [r["final"] for r in ref["runs"]] == [r["final"] for r in got["runs"]]
    assert ref["geometry"]["summary"] == got["geometry"]["summary"]


def test_stale_temporaries_of_a_killed_writer_are_removed_on_resume(tmp_path, tiny_llama, toy_data):
    """SIGKILL during an atomic write leaves `.NAME.xxxx.tmp` beside the target; the next attempt deletes it."""
    from softprompt.config import TrainConfig
    from softprompt.io import remove_stale_temporaries
    from softprompt.training import train

    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp"  # not one of ours (no leading dot): left alone
    keep.write_text("mine")
    cfg = TrainConfig(task="rte", model="tiny", tokens=3, epochs=1, batch_size=4, lr=0.1, compute_dtype="float32",
                      data_dir=str(toy_data), max_length=128)  # fmt: skip
    train(cfg, out, backbone=tiny_llama, progress=False)
    assert not stale.exists() and keep.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_prompt_that_does_not_match_its_run_json_is_refused_everywhere(tmp_path, tiny_llama, tiny_model_dir, toy_data, capsys):
    """Another run's 6-token prompt copied into a 4-token run: eval, generate, neighbors, geometry, transfer and
    export refuse it in one line (SHA-256 recorded at save time; without it, the shape run.json records)."""
    from softprompt.cli import main
    from softprompt.config import TrainConfig
    from softprompt.training import train

    def cfg(tokens):
        return TrainConfig(task="rte", model="tiny", tokens=tokens, epochs=1, batch_size=4, lr=0.1, data_dir=str(toy_data),
                           compute_dtype="float32", max_length=128)  # fmt: skip

    four, six = tmp_path / "four", tmp_path / "six"
    train(cfg(4), four, backbone=tiny_llama, progress=False)
    train(cfg(6), six, backbone=tiny_llama, progress=False)
    record = json.loads((four / "run.json").read_text())
    assert record["artifacts"]["prompt.safetensors"]["shape"] == [4, 32]
    assert load_run(four).prompt().n_tokens == 4 and load_run(four).prompt("best").n_tokens == 4  # untouched: accepted
    (four / "prompt.safetensors").write_bytes((six / "prompt.safetensors").read_bytes())
    with pytest.raises(SoftPromptError, match=r"prompt.safetensors does not match .*run.json: its SHA-256 differs"):
        load_run(four).prompt()
    model = ["--model", str(tiny_model_dir), "--data-dir", str(toy_data), "--max-length", "128", "--quiet"]
    commands = {
        "eval": ["eval", "--run", str(four), *model],
        "generate": ["generate", "hi", "--run", str(four), "--model", str(tiny_model_dir)],
        "neighbors": ["neighbors", str(four), str(six), "--out", str(tmp_path / "n"), *model],
        "geometry": ["geometry", str(four), str(six), "--out", str(tmp_path / "g")],
        "transfer": ["transfer", str(four), "--out", str(tmp_path / "t"), *model],
        "export": ["export", str(four), "--peft", str(tmp_path / "adapter")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("softprompt: error: ") and "\n" not in err and "does not match" in err, (name, err)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "n").exists()  # refused before writing anything
    # a run.json without the digest (older, or edited): the shape it records still catches the swap
    del record["artifacts"]
    (four / "run.json").write_text(json.dumps(record))
    with pytest.raises(SoftPromptError, match=r"holds a 6 x 32 prompt, but .*run.json records 4 x 32: the file belongs"):
        load_run(four).prompt()
    # the best prompt replaced by another of the same shape: only the digest tells
    train(cfg(4), tmp_path / "again", backbone=tiny_llama, progress=False)
    best = tmp_path / "again" / "best.safetensors"
    SoftPrompt(torch.zeros(4, 32), init=load_run(tmp_path / "again").prompt().init).save(best)
    with pytest.raises(SoftPromptError, match="best.safetensors does not match"):
        load_run(tmp_path / "again").prompt("best")


def test_a_checkpoint_is_verified_against_run_json_before_it_is_resumed(tmp_path, tiny_llama, toy_data, interrupt_at, capsys):
    """run.json records the checkpoint's SHA-256 whenever it is written; --resume refuses a checkpoint altered in place
    (same length) before the model loads, and continues from the restored one. A kill while the checkpoint is
    replaced leaves either file accepted; a run from before the digests resumes with a warning, NaN refused."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from softprompt.data.inputs import file_sha256
    from softprompt.training import train
    from tests.conftest import tiny_config

    cfg, out = tiny_config(toy_data, epochs=2), tmp_path / "run"
    ckpt, run_json = out / "checkpoint.safetensors", out / "run.json"
    interrupt_at(5)  # epoch 2, batch 2 (3 batches an epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, backbone=tiny_llama, progress=False)
    interrupt_at(None)
    assert json.loads(run_json.read_text())["artifacts"]["checkpoint.safetensors"] == {"sha256": file_sha256(ckpt)}
    good = ckpt.read_bytes()
    bad = bytearray(good)
    bad[-2] ^= 0x10  # a bit of the last tensor's data: still a loadable checkpoint of the same length
    ckpt.write_bytes(bytes(bad))
    with pytest.raises(SoftPromptError) as err:  # no backbone given: the check comes before the model would load
        train(cfg, out, resume=True, progress=False)
    assert str(err.value) == (
        f"{ckpt} does not match {run_json}: its SHA-256 differs from the one recorded when the run wrote it (the file was "
        "modified or replaced), so the run cannot continue from it: restore the file, or retrain the run from scratch "
        "(train --overwrite without --resume; in a study, delete the run directory)"
    )
    assert ckpt.read_bytes() == bytes(bad) and json.loads(run_json.read_text())["status"] == "interrupted"
    ckpt.write_bytes(good)
    train(cfg, out, resume=True, backbone=tiny_llama, progress=False)
    done = json.loads(run_json.read_text())
    assert done["status"] == "complete" and set(done["artifacts"]) == {"prompt.safetensors", "best.safetensors"}

    # killed between the new checkpoint's write and its rename: run.json accepts the old file too
    other = tmp_path / "killed"
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if str(dst).endswith("checkpoint.safetensors"):
            calls.append(dst)
            if len(calls) == 2:
                raise SystemExit("killed")  # not handled by the run, like SIGKILL: run.json stays `running`
        return real_replace(src, dst)

    os.replace = replace
    try:
        with pytest.raises(SystemExit):
            train(tiny_config(toy_data, epochs=2, checkpoint_every=1), other, backbone=tiny_llama, progress=False)
    finally:
        os.replace = real_replace
    recorded = json.loads((other / "run.json").read_text())["artifacts"]["checkpoint.safetensors"]
    assert recorded["previous_sha256"] == file_sha256(other / "checkpoint.safetensors") != recorded["sha256"]
    train(tiny_config(toy_data, epochs=2, checkpoint_every=1), other, resume=True, backbone=tiny_llama, progress=False)

    # a run from before checkpoint digests: resumed unverified, with a warning; a NaN in it is refused all the same
    interrupt_at(5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "old", backbone=tiny_llama, progress=False)
    interrupt_at(None)
    old = json.loads((tmp_path / "old" / "run.json").read_text())
    del old["artifacts"]
    (tmp_path / "old" / "run.json").write_text(json.dumps(old))
    saved = (tmp_path / "old" / "checkpoint.safetensors").read_bytes()
    with safe_open(str(tmp_path / "old" / "checkpoint.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["param/prompt"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "old" / "checkpoint.safetensors"), metadata=meta)
    with pytest.raises(SoftPromptError, match=r"checkpoint.safetensors: tensor 'prompt' holds NaN/inf.*corrupted"):
        train(cfg, tmp_path / "old", resume=True, backbone=tiny_llama, progress=False)
    (tmp_path / "old" / "checkpoint.safetensors").write_bytes(saved)
    capsys.readouterr()
    train(cfg, tmp_path / "old", resume=True, backbone=tiny_llama, progress=False)
    assert "records no digest of it (a run from before checkpoint digests), so it cannot be verified" in capsys.readouterr().err


def test_a_diverged_run_says_what_it_keeps_without_calling_it_good(tmp_path, tiny_llama, toy_data):
    """The divergence error names the checkpoint it keeps (from before the steps that diverged) and the likely cause,
    without calling a checkpoint "good" or guessing beyond what is known."""
    from softprompt.training import train
    from tests.conftest import tiny_config

    cfg = tiny_config(toy_data, lr=1e30, optimizer="adam", warmup=0.0, schedule="constant", epochs=3)
    with pytest.raises(SoftPromptError) as err:
        train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    text = str(err.value)
    assert "diverged" in text and "last good" not in text and "?" not in text
    kept = (tmp_path / "r" / "checkpoint.safetensors").exists()
    assert (f"{tmp_path / 'r'} keeps its last checkpoint, from before these steps" in text) == kept
    assert ("no checkpoint was written" in text) == (not kept)
    assert text.endswith("the learning rate may be too large: retrain with a smaller --lr (--overwrite; a study's [train] lr)")


def test_every_artifact_read_checks_shape_and_types(tmp_path, tiny_llama, toy_data, interrupt_at):
    """run.json's fields, a prompt file's init metadata and a checkpoint's loop state are checked as they are read
    (types, not just JSON syntax): a damaged one is one line naming the file and the field, never a traceback."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from softprompt.training import train
    from tests.conftest import tiny_config

    run = tmp_path / "run"
    train(tiny_config(toy_data), run, backbone=tiny_llama, progress=False)
    good = json.loads((run / "run.json").read_text())
    for name, value, expected in [
        ("final", [0.5], "field 'final' is [0.5], expected a JSON object"),
        ("train_examples", "12", "field 'train_examples' is '12', expected a JSON integer"),
        ("wall_time_s", True, "field 'wall_time_s' is True, expected a JSON number"),
        ("status", "done", "field 'status' is 'done', expected one of running, interrupted, failed, complete"),
    ]:
        (run / "run.json").write_text(json.dumps({**good, name: value}))
        with pytest.raises(SoftPromptError) as err:
            load_run(run)
        assert str(err.value) == f"{run / 'run.json'}: {expected}"
    (run / "run.json").write_text(json.dumps(good))
    assert load_run(run).complete

    prompt = tmp_path / "p.safetensors"
    tensor = torch.randn(2, 4)
    for init, expected in [
        ("{oops", "metadata 'init' is not valid JSON"),
        ('{"method": 3}', "metadata 'init' is '{\"method\": 3}', expected an object with a string 'method'"),
        ('{"method": "random", "colour": 1}', 'metadata \'init\' is \'{"method": "random", "colour": 1}\', expected an object'),
    ]:
        save_file({"prompt": tensor, "initial_prompt": tensor.clone()}, str(prompt), metadata={"init": init})
        with pytest.raises(SoftPromptError, match=re.escape(f"{prompt}: {expected}")):
            SoftPrompt.load(prompt)

    # a checkpoint (of a run from before checkpoint digests, so not verified) whose loop state has the wrong types
    cfg, cut = tiny_config(toy_data, epochs=2), tmp_path / "cut"
    interrupt_at(5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cut, backbone=tiny_llama, progress=False)
    interrupt_at(None)
    record = json.loads((cut / "run.json").read_text())
    del record["artifacts"]
    (cut / "run.json").write_text(json.dumps(record))
    with safe_open(str(cut / "checkpoint.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = json.loads(meta["state"])
    save_file(tensors, str(cut / "checkpoint.safetensors"), metadata={"state": json.dumps({**state, "optimizer_step": "3"})})
    with pytest.raises(SoftPromptError, match=r"checkpoint.safetensors: the loop state's 'optimizer_step' is '3', expected int"):
        train(cfg, cut, resume=True, backbone=tiny_llama, progress=False)


def test_generation_arguments_are_checked_before_the_model_loads(tiny_llama, tmp_path, capsys):
    """`generate --max-new-tokens 0` was a traceback after the model loaded and `--temperature -1` was accepted: every
    generation argument is checked up front, by the command (before any model loads) and by `generate` itself."""
    from softprompt.cli import main
    from softprompt.generate import generate

    missing = str(tmp_path / "no-such-model")  # loading it would fail: the argument's error must come first
    for flags, expected in [
        (["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer, got 0"),
        (["--max-new-tokens", "-1"], "--max-new-tokens must be a positive integer, got -1"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
        (["--seed", "-3"], "--seed must be an integer from 0 to 2**64 - 1, got -3"),
    ]:
        capsys.readouterr()
        assert main(["generate", "hi", "--model", missing, *flags]) == 2, flags
        assert capsys.readouterr().err.strip() == f"softprompt: error: {expected}"
    for kwargs, expected in [
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a positive integer, got 2.5"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0 (0 = greedy), got inf"),
        ({"seed": 2**64}, "seed must be an integer from 0 to 2**64 - 1"),
    ]:
        with pytest.raises(SoftPromptError, match=re.escape(expected)):
            generate(tiny_llama, "hi", **kwargs)
    assert isinstance(generate(tiny_llama, "hi", max_new_tokens=2, temperature=0.7, seed=1), str)


def test_a_train_refused_for_bad_data_leaves_no_empty_out(tmp_path, tiny_llama, toy_data):
    """The run directory (and the parents created for it) is removed again when the command fails leaving nothing in
    it but the lock; a directory that existed before is never removed."""
    from softprompt.training import train
    from tests.conftest import tiny_config

    with open(toy_data / "rte" / "train.jsonl", "a") as f:
        f.write("{oops\n")
    cfg = tiny_config(toy_data)
    out = tmp_path / "new" / "deep" / "run"
    with pytest.raises(SoftPromptError, match=r"train.jsonl:13: invalid JSON"):
        train(cfg, out, backbone=tiny_llama, progress=False)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(SoftPromptError, match=r"train.jsonl:13: invalid JSON"):
        train(cfg, mine / "run", backbone=tiny_llama, progress=False)
    assert mine.is_dir() and not (mine / "run").exists()
    (mine / "run").mkdir()
    with pytest.raises(SoftPromptError, match=r"train.jsonl:13: invalid JSON"):
        train(cfg, mine / "run", backbone=tiny_llama, progress=False)
    assert (mine / "run").is_dir()  # it was there before: kept


def test_an_interrupted_run_is_named_with_the_right_article(tmp_path, tiny_llama, toy_data, interrupt_at):
    from softprompt.training import train
    from tests.conftest import tiny_config

    interrupt_at(2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(toy_data), tmp_path / "r", backbone=tiny_llama, progress=False)
    interrupt_at(None)
    with pytest.raises(SoftPromptError, match=r"already holds an interrupted run: pass --resume"):
        train(tiny_config(toy_data), tmp_path / "r", backbone=tiny_llama, progress=False)


def test_a_cache_that_is_a_file_is_reported_before_dequantizing(tmp_path, monkeypatch):
    """SOFTPROMPT_CACHE naming a file was reported only after the ~3 s dequantize: now before anything loads."""
    import softprompt.model.backbones as backbones

    cache = tmp_path / "cache-file"
    cache.write_text("not a directory")

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the cache was checked")

    monkeypatch.setattr(backbones.AutoModelForCausalLM, "from_pretrained", loaded)
    monkeypatch.setattr(backbones.AutoTokenizer, "from_pretrained", loaded)
    for value in (cache, cache / "sub"):
        monkeypatch.setenv("SOFTPROMPT_CACHE", str(value))
        with pytest.raises(SoftPromptError) as err:
            backbones.load_backbone("smollm2-135m", device="cpu")
        assert str(err.value) == (
            f"SOFTPROMPT_CACHE {value}: {cache} exists and is not a directory; point SOFTPROMPT_CACHE at a directory"
        )


def test_tasks_stats_fails_whole_on_a_data_error(tmp_path, toy_data, capsys):
    """`tasks --stats` exited 0 with a data error cut into a table cell: now exit 2 and the whole FILE:LINE message.
    A split that is simply not there (no file in this folder) is still `n/a` in the table."""
    from softprompt.cli import main

    with open(toy_data / "rte" / "val.jsonl", "a") as f:
        f.write('{"premise": "x", "hypothesis": "y", "label": "maybe"}\n')
    capsys.readouterr()
    assert main(["tasks", "--stats", "--task", "rte", "--data-dir", str(toy_data)]) == 2
    out = capsys.readouterr()
    assert out.err.strip() == (
        f"softprompt: error: {toy_data / 'rte' / 'val.jsonl'}:5 field 'label': label 'maybe' is not one of the task's labels "
        "['entailment', 'not_entailment']"
    )
    assert main(["tasks", "--stats", "--task", "cb", "--data-dir", str(toy_data)]) == 0  # no cb files here: n/a
    assert "n/a" in capsys.readouterr().out

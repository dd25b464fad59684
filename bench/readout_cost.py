"""What the self-descriptions and the PEZ hard-prompt baseline of a study compute, before and after issue 36, in
work units (not wall time): examples scored, training examples, generate calls, generated sequences, model forwards
and token positions.

- **PEZ baseline** (counted from the config and the data, no model): a trained baseline scores the validation
  subsample (and its content-free calibration inputs) and the dev split at every evaluation point (the initial
  prompt and every `eval_every` steps when that is set, every epoch end), then its text typed once. Before issue 36
  it took [train]'s `eval_every` and `selection`; now `selection = last` (its row is the last prompt: the dev split is
  held out but not scored) and `eval_every = 0` (no curve: the report draws none for baselines).
- **Self-descriptions** (counted on the model: a forward hook counts the body's forwards and token positions, prefill
  and decoding): before, every run's trained and initial prompt each got the embed probe (greedy and `samples`
  samples) and the patch probe (greedy per layer); now the initial prompt gets the greedy probes once per distinct
  init (the seeds of a task started from the same text share it). With `--study-dir` the study's own runs are
  described; without, each task's text-init prompt stands in for the init and that prompt moved by seeded noise for
  each seed's trained prompt (generation lengths then are the model's on those prompts).

    .venv/bin/python bench/readout_cost.py configs/demo.toml --study-dir runs/demo     # the demo's own prompts
    .venv/bin/python bench/readout_cost.py configs/demo.toml --no-describe               # the PEZ counts alone, instant
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from softprompt.evaluate import content_free_examples  # noqa: E402
from softprompt.runs.baselines import baseline_config  # noqa: E402
from softprompt.study.config import load_study_config  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402


def evaluation_points(cfg, steps_per_epoch: int) -> int:
    """How many times the training loop evaluates: the initial prompt and every `eval_every` steps (not at an epoch
    end) when `eval_every` is set, and every epoch end (`training.loop`)."""
    points = cfg.epochs
    if cfg.eval_every:
        points += 1 + sum(
            1 for s in range(1, cfg.epochs * steps_per_epoch + 1) if s % cfg.eval_every == 0 and s % steps_per_epoch
        )
    return points


def hard_work(cfg) -> dict:
    """Examples a hard baseline run of `cfg` trains on and scores (validation, calibration, dev, typed text)."""
    task = get_task(cfg.task)
    train, dev = task.load_train(cfg.data_dir, limit=cfg.max_train, seed=cfg.seed, dev_size=cfg.dev_size)
    val = len(task.load("validation", cfg.data_dir, limit=cfg.max_eval, seed=0))
    steps = math.ceil(len(train) / (cfg.batch_size * cfg.grad_accum))
    points = evaluation_points(cfg, steps)
    dev_scored = len(dev) if cfg.selection != "last" else 0
    calibration = len(content_free_examples(task)[0])
    scored = points * (val + calibration + dev_scored) + val  # + the typed text, once
    return {
        "training examples (fwd+bwd)": cfg.epochs * steps * cfg.batch_size * cfg.grad_accum,
        "evaluation points": points,
        "examples scored": scored,
        "of which dev": points * dev_scored,
    }


def pez_table(study) -> list[dict]:
    rows = []
    for task in study.tasks:
        base = study.baseline_base(task)
        now = baseline_config(base, "hard", study.baselines.overrides().get("hard"))
        before = replace(now, selection=base.selection, eval_every=base.eval_every)
        for when, cfg in (("before", before), ("after", now)):
            rows.append(
                {
                    "task": get_task(task).name,
                    "when": when,
                    "selection": cfg.selection,
                    "eval_every": cfg.eval_every,
                    **hard_work(cfg),
                }
            )
    return rows


class Counter:
    """Forwards and token positions of the model body (a forward pre-hook), generate calls and sequences."""

    def __init__(self, backbone):
        self.forwards = self.tokens = self.calls = self.sequences = 0
        body = getattr(backbone.model, backbone.model.base_model_prefix)
        body.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = x if x is not None else kwargs.get("input_ids", args[0] if args else None)
        self.forwards += 1
        self.tokens += int(x.shape[0] * x.shape[1])

    def snapshot(self) -> dict:
        return {
            "generate calls": self.calls,
            "sequences": self.sequences,
            "forwards": self.forwards,
            "token positions": self.tokens,
        }


def describe_counts(study, args) -> list[dict]:
    """The descriptions' work before (every prompt and init with samples) and after (`describe_report`)."""
    import softprompt.analysis.describe_probes as probes
    from softprompt.analysis.describe import describe_report
    from softprompt.model.backbones import load_backbone

    backbone = load_backbone(study.model)
    counter = Counter(backbone)
    real = probes._generate

    def counting(b, embeds, **kw):
        counter.calls += 1
        counter.sequences += max(kw.get("samples", 0), 1)
        return real(b, embeds, **kw)

    probes._generate = counting
    samples = study.analysis.describe_samples
    pairs = _prompt_pairs(study, backbone, args.study_dir)
    rows = []
    # before: each run's trained prompt and its init, both with samples (the code before issue 36)
    for trained, initial in pairs:
        probes.describe_prompt(backbone, trained, samples=samples)
        probes.describe_prompt(backbone, initial, samples=samples)
    rows.append({"when": "before", "prompts described": 2 * len(pairs), **counter.snapshot()})
    counter.forwards = counter.tokens = counter.calls = counter.sequences = 0
    if args.study_dir:
        from softprompt.analysis.common import as_runs

        runs = as_runs(sorted(p.parent for p in Path(args.study_dir).glob("runs/**/run.json") if "baselines" not in p.parts))
        describe_report(backbone, runs, samples=samples)
    else:
        inits: dict = {}
        for trained, initial in pairs:
            probes.describe_prompt(backbone, trained, samples=samples)
            key = initial.numpy().tobytes()
            if key not in inits:
                inits[key] = probes.describe_prompt(backbone, initial, samples=0)
    distinct = len({initial.numpy().tobytes() for _, initial in pairs})
    rows.append({"when": "after", "prompts described": len(pairs) + distinct, **counter.snapshot()})
    return rows


def _prompt_pairs(study, backbone, study_dir) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(trained, initial) prompt matrices: the study's runs, or each task's text init moved by seeded noise per seed."""
    if study_dir:
        from softprompt.analysis.common import as_runs

        runs = as_runs(sorted(p.parent for p in Path(study_dir).glob("runs/**/run.json") if "baselines" not in p.parts))
        return [(r.prompt("last").weight.detach(), r.prompt("last").initial.detach()) for r in runs]
    from softprompt.model.prompt import init_prompt

    pairs = []
    for task in study.tasks:
        cfg = study.run_config(task, study.seeds[0])
        init = init_prompt(
            backbone.model, backbone.tokenizer, cfg.tokens, "text", text=cfg.init_text or get_task(task).description
        )
        initial = init.weight.detach().clone()
        for seed in study.seeds:
            noise = torch.randn(initial.shape, generator=torch.Generator().manual_seed(seed))
            pairs.append((initial + 0.05 * initial.std() * noise, initial))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="a study config, e.g. configs/demo.toml")
    ap.add_argument("--study-dir", type=Path, default=None, help="the study's output directory: describe its own runs")
    ap.add_argument("--no-describe", action="store_true", help="the PEZ counts only (no model loaded)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    study = load_study_config(args.config)
    pez = pez_table(study)
    print("PEZ hard-prompt baseline, per task (examples):")
    cols = [
        "task",
        "when",
        "selection",
        "eval_every",
        "training examples (fwd+bwd)",
        "evaluation points",
        "examples scored",
        "of which dev",
    ]
    print(common.fmt_table(pez, cols))
    describe = []
    if not args.no_describe and study.analysis.describe:
        describe = describe_counts(study, args)
        print("\nself-descriptions, all runs:")
        print(
            common.fmt_table(
                describe, ["when", "prompts described", "generate calls", "sequences", "forwards", "token positions"]
            )
        )
    if args.json:
        from softprompt.io import write_json

        write_json(args.json, {"config": str(args.config), "pez": pez, "describe": describe, "machine": common.machine()})
    else:
        print(json.dumps({"config": str(args.config)}))


if __name__ == "__main__":
    main()

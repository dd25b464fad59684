"""Which parts of a deep prompt matter: its virtual tokens (every layer's keys and values at one position) and its
layers (one layer's keys and values at every position), each put back to its initial values alone and the prompt
scored again, as `importance` does for a soft prompt's rows.

Only the `init` replacement applies: a deep prompt's rows are keys and values, not input embeddings, so there is no
vocabulary mean to put in their place. The same caveats hold (one part at a time: interactions are not seen; n
examples, paired standard errors over them).
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.analysis.ablation_effects import SE_KEYS, accuracy_se, effect, per_example, scores_of
from softprompt.errors import SoftPromptError
from softprompt.model.deep_prompt import KVPrompt, PrefixShape


def _ablations(matrix: torch.Tensor, initial: torch.Tensor, shape: PrefixShape) -> list[tuple[str, int, torch.Tensor]]:
    """(kind, index, ablated matrix) for every position and every layer whose values moved from their initial ones."""
    n, blocks = matrix.shape[0], shape.layers * 2
    out = []
    for i in range(n):
        if not torch.equal(matrix[i], initial[i]):
            p = matrix.clone()
            p[i] = initial[i]
            out.append(("position", i, p))
    view, init_view = matrix.view(n, blocks, -1), initial.view(n, blocks, -1)
    for layer in range(shape.layers):
        cols = slice(2 * layer, 2 * layer + 2)  # the layer's keys and values
        if not torch.equal(view[:, cols], init_view[:, cols]):
            p = view.clone()
            p[:, cols] = init_view[:, cols]
            out.append(("layer", layer, p.view(n, -1)))
    return out


def deep_importance(
    evaluator, task, matrix: torch.Tensor, initial: torch.Tensor, shape: PrefixShape, *, limit=None, seed=0, split="validation"
) -> dict[str, Any]:
    """Per virtual token and per layer of a deep prompt: the accuracy drop, loss increase and task-metric drop when it
    is put back to its initial keys/values alone, with paired standard errors; `ranking` orders the positions by loss
    increase, `layer_ranking` the layers."""
    from softprompt.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    if matrix.shape != initial.shape:
        raise SoftPromptError(f"initial deep prompt {tuple(initial.shape)} and prompt {tuple(matrix.shape)} differ in shape")
    matrix, initial = matrix.detach().float().cpu(), initial.detach().float().cpu()
    where = {"split": split, "limit": limit, "seed": seed}
    base_res = evaluator.evaluate(task, KVPrompt(matrix, shape), **where)
    if base_res.loss is None:
        raise SoftPromptError(f"task {task.name}: no {split} examples to score the prompt on")
    base, base_examples = scores_of(base_res, task.metric), per_example(base_res)
    done = {(kind, i): evaluator.evaluate(task, KVPrompt(p, shape), **where) for kind, i, p in _ablations(matrix, initial, shape)}

    def effects(kind: str, count: int) -> list[dict[str, Any]]:
        rows = []
        for i in range(count):
            res = done.get((kind, i))
            paired = None if res is None else (per_example(res), base_examples)
            one = effect(base, base if res is None else scores_of(res, task.metric), res is None, paired)
            top = {k: one[k] for k in ("accuracy_drop", "loss_increase", "metric_drop", *SE_KEYS)}
            rows.append({"index": i, **top, "by_replacement": {"init": one}})
        return rows

    positions, layers = effects("position", matrix.shape[0]), effects("layer", shape.layers)
    return {
        "task": task.name,
        "split": split,
        "n": base_res.n,
        "metric": task.metric,
        "primary": "init",
        "base": {**base, "accuracy_se": accuracy_se(base_res.accuracy, base_res.n)},
        "positions": positions,
        "ranking": [p["index"] for p in sorted(positions, key=lambda p: (-p["loss_increase"], p["index"]))],
        "layers": layers,
        "layer_ranking": [p["index"] for p in sorted(layers, key=lambda p: (-p["loss_increase"], p["index"]))],
        "evaluations": 1 + len(done),
    }

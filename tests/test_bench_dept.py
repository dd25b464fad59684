"""bench/dept_screen.py (issue 38 item 3): the DePT-style split it measures is what it says. The update is added to the
input embeddings by position (nothing past s), it trains with the prompt through the library's own train(), and the
library is left as it was after the screen (no hook, no wrapped functions)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from softprompt.runs.directory import load_run
from softprompt.training import train
from tests.conftest import bench_importable, tiny_config


@pytest.fixture(scope="module")
def dept():
    with bench_importable():
        import dept_screen

        yield dept_screen


def test_update_is_added_by_position_and_stops_at_s(dept):
    emb = torch.nn.Embedding(10, 4)
    update = dept.PositionUpdate(3, 2, 4, seed=0, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        update.b.copy_(torch.randn(2, 4))
    handle = emb.register_forward_hook(update.hook)
    ids = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    out = emb(ids)
    handle.remove()
    delta = (update.a @ update.b).detach()
    assert torch.allclose(out[:, :3], emb(ids)[:, :3] + delta)  # the same update for the same position in every row
    assert torch.equal(out[:, 3:], emb(ids)[:, 3:])  # positions past s keep their embeddings


def test_split_trains_with_the_prompt_and_leaves_the_library_as_it_was(dept, tiny_llama, toy_data, tmp_path):
    import softprompt.training.recipe as recipe
    import softprompt.training.step as step

    before = (recipe.build_trainables, step.optimizer_and_schedule)
    emb = tiny_llama.model.get_input_embeddings()
    cfg = tiny_config(toy_data, epochs=2, scoring_strategy="plain", max_train=8)
    with dept.dept_installed(rank=2, ab_lr=None, seed=0):
        train(cfg, tmp_path / "split", backbone=tiny_llama, progress=False, baselines=False)
    train(cfg, tmp_path / "plain", backbone=tiny_llama, progress=False, baselines=False)
    assert (recipe.build_trainables, step.optimizer_and_schedule) == before
    assert not emb._forward_hooks  # the hook is gone with the screen
    split, plain = load_run(tmp_path / "split").record, load_run(tmp_path / "plain").record
    width = emb.weight.shape[1]
    assert split.parameters.trainable > plain.parameters.trainable + 2 * width  # A (s x 2) and B (2 x width) trained too
    split_prompt = load_file(str(tmp_path / "split" / "prompt.safetensors"))
    plain_prompt = load_file(str(tmp_path / "plain" / "prompt.safetensors"))
    assert torch.equal(split_prompt["initial_prompt"], plain_prompt["initial_prompt"])
    assert not torch.equal(split_prompt["prompt"], plain_prompt["prompt"])  # B moved off zero: the prompt's gradients changed

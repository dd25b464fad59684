"""The GPU path, checked on a CPU: the `padded` strategy and the training step never read a value back from
the device, and a batch reaches the device in one copy.

On the meta device tensors have shapes but no values, so any read of a value (`.item()`, `.tolist()`,
`bool(t)`, a copy to the host) raises: code that runs there only queues work, which on a GPU means the
host never waits for the device. The one read transformers' llama code makes per forward (whether
position ids are packed sequences, `masking_utils.find_packed_sequence_indices`) is transformers' own
and is patched out here.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from softprompt.backbones import Backbone
from softprompt.batching import collate, encode_examples, packed_copy
from softprompt.config import TrainConfig
from softprompt.distributed import SINGLE
from softprompt.scoring import ScoringOptions, batch_choice_scores, choice_loss
from softprompt.train import TrainingLoop, build_trainables, prepare_data

from .test_fastpaths import EXAMPLES

PADDED = ScoringOptions(strategy="padded")


@pytest.fixture
def no_packed_check(monkeypatch):
    import transformers.masking_utils as masking_utils

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


class Copies(TorchDispatchMode):
    """Counts copies from the CPU to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.to_device = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            src = args[1] if func.overloadpacket is torch.ops.aten.copy_ else args[0]
            if src.device.type == "cpu" and out.device.type != "cpu":
                self.to_device += 1
        return out


def test_batch_reaches_the_device_in_one_copy(tiny_llama):
    tok = tiny_llama.tokenizer
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=3), tok.pad_token_id)
    with Copies() as copies:
        moved = batch.to("meta")
    assert copies.to_device == 1
    assert moved.on_host() is batch and batch.to("cpu") is batch and moved.to("meta") is moved
    same = packed_copy(batch, torch.device("cpu"))  # the packing and unpacking, where values can be compared
    for name in ("input_ids", "attention_mask", "target_row", "target_pos", "target_tok", "target_slot", "labels"):
        for got in (getattr(same, name), getattr(moved, name)):
            assert got.shape == getattr(batch, name).shape and got.dtype == getattr(batch, name).dtype, name
        assert torch.equal(getattr(same, name), getattr(batch, name)), name
    assert same.choice_mask.dtype == moved.choice_mask.dtype == torch.bool and torch.equal(same.choice_mask, batch.choice_mask)
    assert torch.equal(same.row_example, batch.row_example) and (same.num_examples, same.max_choices) == (7, 3)


def test_padded_scoring_reads_nothing_back(tiny_backbone, no_packed_check):
    """Forward, head, choice scores, loss and backward of the GPU path, on a device without values."""
    model, tok = tiny_backbone.model.to("meta"), tiny_backbone.tokenizer
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=5), tok.pad_token_id)
    prompt = torch.zeros(5, model.config.hidden_size, device="meta", requires_grad=True)
    scores = batch_choice_scores(model, prompt, batch, options=PADDED)
    choice_loss(scores, batch.to("meta").labels).backward()
    assert scores.shape == (7, 3) and prompt.grad is not None and prompt.grad.device.type == "meta"


def test_training_steps_read_nothing_back_between_reads(tiny_backbone, toy_data, tmp_path, no_packed_check):
    """The library's own step (`TrainingLoop._micro_batch` with its optimiser steps) on the meta device:
    four micro-batches and optimiser steps, their losses queued, no read until `read_losses`."""
    cfg = TrainConfig(
        task="rte", model="tiny", tokens=4, epochs=1, batch_size=2, lr=0.1, data_dir=str(toy_data),
        compute_dtype="float32", scoring_strategy="padded", log_every=100,
    )  # fmt: skip
    backbone = Backbone(model=tiny_backbone.model, tokenizer=tiny_backbone.tokenizer, name="t", source="t", revision="t")
    data = prepare_data(cfg, backbone, SINGLE)
    trainables = build_trainables(cfg, data, SINGLE)
    backbone.model.to("meta")
    trainables.prompt.to("meta")
    trainables.params["prompt"] = trainables.prompt.weight
    loop = TrainingLoop(cfg, tmp_path / "run", data, trainables, SINGLE, scoring=None, progress=False)
    assert loop.read_every == 100
    order = list(range(len(data.encoded)))
    for micro in range(4):
        loop._micro_batch(0, micro, order)
    assert loop.state["optimizer_step"] == 4 and len(loop.unread) == 4 and loop.losses == []
    assert loop.stats["forwards"] == 4 and loop.stats["head"] > 0
    with pytest.raises((RuntimeError, NotImplementedError)):  # the read itself is the one place that needs values
        loop.read_losses()


def test_read_cadence_follows_the_device_table(tiny_llama, toy_data, tmp_path):
    from softprompt.train import READ_EVERY, READ_EVERY_DEFAULT

    cfg = TrainConfig(task="rte", model="tiny", tokens=4, epochs=1, data_dir=str(toy_data), compute_dtype="float32")
    data = prepare_data(cfg, tiny_llama, SINGLE)
    loop = TrainingLoop(cfg, tmp_path / "a", data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None, progress=False)
    assert loop.read_every == READ_EVERY["cpu"] == 1 and READ_EVERY_DEFAULT > 1  # CPU: every step, as always
    cfg.log_every = 5
    loop = TrainingLoop(cfg, tmp_path / "b", data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None, progress=False)
    assert loop.read_every == 5 and loop.scoring == ScoringOptions()
    with pytest.raises(Exception, match="differ"):
        cfg.scoring_strategy = "kv_tree"
        TrainingLoop(cfg, tmp_path / "c", data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=PADDED, progress=False)
    assert json.loads(json.dumps(cfg.to_dict()))["scoring_strategy"] == "kv_tree"  # part of the run's config


def test_cuda_attention_leaves_out_cudnn_unless_asked():
    """cuDNN's SDPA plans anew for every sequence length (measured on an H100: it doubled a llama training step)."""
    from torch.nn.attention import SDPBackend

    from softprompt.scoring.attention import sdpa_backends

    allowed = sdpa_backends(torch.device("cuda"), ScoringOptions())
    assert SDPBackend.CUDNN_ATTENTION not in allowed and SDPBackend.FLASH_ATTENTION in allowed
    assert sdpa_backends(torch.device("cuda"), ScoringOptions(cudnn_attention=True)) is None
    assert sdpa_backends(torch.device("cpu"), ScoringOptions()) is None


def test_the_backend_choice_reaches_the_scoring_forward(tiny_llama, monkeypatch):
    """The allowed backends wrap the forward itself: allowing only a backend this CPU lacks makes SDPA fail."""
    from torch.nn.attention import SDPBackend

    import softprompt.scoring.attention as attention

    tok = tiny_llama.tokenizer
    model = tiny_llama.model
    assert model.config._attn_implementation == "sdpa"  # noqa: SLF001
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=0), tok.pad_token_id)
    with torch.no_grad():
        expected = batch_choice_scores(model, None, batch, options=PADDED)
        monkeypatch.setattr(attention, "sdpa_backends", lambda device, options: [SDPBackend.MATH])
        assert torch.allclose(batch_choice_scores(model, None, batch, options=PADDED), expected, atol=1e-5)
        monkeypatch.setattr(attention, "sdpa_backends", lambda device, options: [SDPBackend.CUDNN_ATTENTION])
        with pytest.raises(RuntimeError):
            batch_choice_scores(model, None, batch, options=PADDED)

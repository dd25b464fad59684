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

from softprompt.config import TrainConfig
from softprompt.data.batching import collate, encode_examples, packed_copy
from softprompt.distributed import SINGLE
from softprompt.model.backbones import Backbone
from softprompt.scoring import ScoringOptions, batch_choice_scores, choice_loss
from softprompt.training import TrainStep, build_trainables, prepare_data

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


@pytest.mark.parametrize("graphed", [False, True])
def test_training_steps_read_nothing_back_between_reads(tiny_backbone, toy_data, tmp_path, no_packed_check, graphed):
    """The library's own step (`TrainStep.forward_backward` with its optimiser steps) on the meta device:
    four micro-batches and optimiser steps, their losses queued, no read until `TrainStep.read`; `graphed`: through
    `StepGraphs` (pack, static copy, capture, replays) with the CPU stand-in for a graph."""
    from softprompt.training.cuda_graphs import EagerReplay, StepGraphs

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
    step = TrainStep(cfg, data, trainables, SINGLE, scoring=None)
    assert step.read_every == 100
    if graphed:
        step.graphs, step.bucket = StepGraphs(torch.device("meta"), capture=EagerReplay()), 64
    order = list(range(len(data.encoded)))
    for micro in range(4):
        step.forward_backward(0, micro, order)
        assert step.ends_accumulation(micro)
        step.optimizer_step()
    assert step.scheduler.last_epoch == 4 and len(step.unread) == 4 and not step.pending
    assert not graphed or (step.graphs.replays == 4 and step.graphs.captures >= 1)
    assert step.stats["forwards"] == 4 and step.stats["head"] > 0
    with pytest.raises((RuntimeError, NotImplementedError)):  # the read itself is the one place that needs values
        step.read()


def test_read_cadence_follows_the_device_table(tiny_llama, toy_data, tmp_path):
    from softprompt.training.step import READ_EVERY, READ_EVERY_DEFAULT

    cfg = TrainConfig(task="rte", model="tiny", tokens=4, epochs=1, data_dir=str(toy_data), compute_dtype="float32")
    data = prepare_data(cfg, tiny_llama, SINGLE)
    step = TrainStep(cfg, data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None)
    assert step.read_every == READ_EVERY["cpu"] == 1 and READ_EVERY_DEFAULT > 1  # CPU: every step, as always
    cfg.log_every = 5
    step = TrainStep(cfg, data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None)
    assert step.read_every == 5 and step.scoring == ScoringOptions()
    with pytest.raises(Exception, match="differ"):
        cfg.scoring_strategy = "kv_tree"
        TrainStep(cfg, data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=PADDED)
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


def _counted(monkeypatch, name: str) -> list[int]:
    """Counts the calls of torch.nn.functional's `name` (BLOOM's own kernels call neither SDPA nor F.gelu)."""
    import softprompt.scoring.bloom as bloom

    calls, fn = [0], getattr(torch.nn.functional, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return fn(*args, **kwargs)

    monkeypatch.setattr(bloom.F, name, counted)
    return calls


def _scores_and_grad(model, prompt, batch, options):
    prompt = prompt.clone().requires_grad_()
    scores = batch_choice_scores(model, prompt, batch, options=options)
    (grad,) = torch.autograd.grad(scores[~torch.isinf(scores)].sum(), prompt)
    return scores.detach(), grad


@pytest.mark.parametrize("padding_mask", [False, True])
@pytest.mark.parametrize("replaced", ["attention", "gelu", "both"])
def test_bloom_kernels_give_the_same_scores_and_gradients(tiny_backbone, monkeypatch, padding_mask, replaced):
    """BLOOM's attention through SDPA and its GELU as one kernel (the defaults on CUDA; here forced on the CPU): the
    scores and the prompt's gradient of the model's own kernels, with or without the padding mask, one call per
    layer of each replacement, and the model's modules as they were afterwards. A llama model has no BLOOM
    modules: nothing changes."""
    from softprompt.scoring.bloom import bloom_modules

    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=3), tok.pad_token_id, bucket=16)
    prompt = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.5
    sdpa, gelu = _counted(monkeypatch, "scaled_dot_product_attention"), _counted(monkeypatch, "gelu")
    own = ScoringOptions(strategy="padded", padding_mask=padding_mask, alibi_sdpa_devices=(), fused_gelu_devices=())
    scores, grad = _scores_and_grad(model, prompt, batch, own)
    layers = model.config.n_layer if "bloom" in tiny_backbone.name else 0
    assert sdpa[0] == gelu[0] == 0 and len(bloom_modules(model, "attention")) == len(bloom_modules(model, "gelu")) == layers
    on = {
        "alibi_sdpa_devices": ("cpu",) if replaced != "gelu" else (),
        "fused_gelu_devices": ("cpu",) if replaced != "attention" else (),
    }
    got, got_grad = _scores_and_grad(model, prompt, batch, ScoringOptions(strategy="padded", padding_mask=padding_mask, **on))
    assert sdpa[0] == (layers if replaced != "gelu" else 0) and gelu[0] == (layers if replaced != "attention" else 0)
    assert torch.equal(torch.isinf(got), torch.isinf(scores))
    assert torch.allclose(got[~torch.isinf(got)], scores[~torch.isinf(scores)], atol=1e-5)
    assert torch.allclose(got_grad, grad, atol=1e-5, rtol=1e-4) and grad.abs().sum() > 0
    assert all("forward" not in vars(m) for kind in ("attention", "gelu") for m in bloom_modules(model, kind))


def test_one_kernel_gelu_is_bloom_gelu():
    """The replacement is BLOOM's own GELU (its tanh formula, not the erf one), value and gradient, over the range
    activations take (the tiny test models' activations are too small to tell the two GELUs apart)."""
    from transformers.models.bloom.modeling_bloom import BloomGelu

    from softprompt.scoring.bloom import _tanh_gelu

    x = (torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3).requires_grad_()
    want = BloomGelu()(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    got = _tanh_gelu(x)
    (got_grad,) = torch.autograd.grad(got.sum(), x)
    assert torch.allclose(got, want, atol=1e-7) and torch.allclose(got_grad, want_grad, atol=1e-7)
    assert not torch.allclose(torch.nn.functional.gelu(x), want, atol=1e-4)  # the erf GELU would be told apart


def test_bucketed_lengths_are_geometric():
    """Steps of `bucket` tokens while that is at most an eighth of the length, then an eighth: never shorter, at
    most 12.5% (or one bucket) longer, and at most 8 shapes per doubling of the length."""
    from softprompt.data.batching import bucketed_length

    got = [bucketed_length(n, 16) for n in range(1, 1025)]
    assert all(b >= n and b % 16 == 0 and b <= max(n * 1.125, n + 15) for n, b in zip(range(1, 1025), got, strict=True))
    assert got[:64] == [16] * 16 + [32] * 16 + [48] * 16 + [64] * 16  # short rows: steps of 16
    assert bucketed_length(300, 16) == 320 and bucketed_length(513, 16) == 576  # longer rows: steps of 32, 64
    for lo in (128, 256, 512):
        assert len({b for n, b in zip(range(1, 1025), got, strict=True) if lo < n <= 2 * lo}) <= 8
    assert sorted(got) == got  # a longer batch never gets a shorter bucket


# ----------------------------------------------------------------------------- CUDA graphs (softprompt.training.cuda_graphs)


def test_bucketed_batches_score_the_same(tiny_backbone):
    """Padding rows to a length bucket and targets to a multiple of 8 (what makes graph shapes repeat) changes no score."""
    from softprompt.data.batching import TARGET_MULTIPLE, shape_key

    tok, model = tiny_backbone.tokenizer, tiny_backbone.model
    encoded = encode_examples(EXAMPLES, tok, n_prompt=3)
    prompt = torch.randn(3, model.config.hidden_size) * 0.02
    plain, bucketed = collate(encoded, tok.pad_token_id), collate(encoded, tok.pad_token_id, bucket=24)
    assert bucketed.input_ids.shape[1] % 24 == 0 and bucketed.input_ids.shape[1] > plain.input_ids.shape[1]
    assert len(bucketed.target_row) % TARGET_MULTIPLE == 0 and len(bucketed.target_row) > len(plain.target_row)
    with torch.no_grad():
        for options in (PADDED, ScoringOptions(strategy="plain")):
            expected = batch_choice_scores(model, prompt, plain, options=options)
            got = batch_choice_scores(model, prompt, bucketed, options=options)
            assert torch.equal(torch.isinf(got), torch.isinf(expected))
            assert torch.allclose(got[~torch.isinf(got)], expected[~torch.isinf(expected)], atol=1e-5)
    shorter = collate(encoded[:-1], tok.pad_token_id, bucket=24)
    assert shape_key(shorter) != shape_key(bucketed)  # another example count: another graph


def _graph_step(cfg, data, *, graphs: bool) -> TrainStep:
    from softprompt.training.cuda_graphs import EagerReplay, StepGraphs

    torch.manual_seed(0)
    step = TrainStep(cfg, data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None)
    if graphs:  # what a CUDA device gets (`training.step.step_graphs`), with the CPU's stand-in for a graph
        step.graphs, step.bucket = (
            StepGraphs(torch.device("cpu"), capture=EagerReplay()),
            2,
        )  # toy rows (22-24 tokens): two buckets
    return step


def _train_epochs(step: TrainStep, orders: list[list[int]]) -> list[float]:
    """The loop's steps without the run around them (`TrainingLoop._epoch`): per epoch, forward and backward of each
    micro-batch and the optimiser step at each accumulation's end, then one read; returns the losses read."""
    losses: list[float] = []
    for epoch, order in enumerate(orders):
        step.pending = []
        for micro in range(step.micro_per_epoch):
            step.forward_backward(epoch, micro, order)
            if step.ends_accumulation(micro):
                step.optimizer_step()
        losses += step.read().losses
    return losses


def test_graphed_training_steps_match_eager_ones(tiny_llama, toy_data, tmp_path):
    """Two epochs with gradient accumulation through `StepGraphs` (the CPU stand-in replays from the static
    buffer into the captured outputs, as a graph does): the same losses and prompt as eager steps on the
    same bucketed batches, one capture per shape, every step replayed."""
    cfg = TrainConfig(
        task="rte", model="tiny", tokens=4, epochs=2, batch_size=2, grad_accum=2, lr=0.1, data_dir=str(toy_data),
        compute_dtype="float32", scoring_strategy="padded", max_train=12,
    )  # fmt: skip
    data = prepare_data(cfg, tiny_llama, SINGLE)
    eager, graphed = (_graph_step(cfg, data, graphs=g) for g in (False, True))
    eager.bucket = graphed.bucket  # the same padded shapes: the only difference is the replay
    # toy rows repeat every 4: pairs of one padded shape but different rows (a stale static input shows)
    order = [0, 1, 2, 3, 4, 6, 5, 7, 8, 11, 9, 10]
    eager_losses, graphed_losses = (_train_epochs(step, [order, order[::-1]]) for step in (eager, graphed))
    g = graphed.graphs
    assert g.replays == 2 * graphed.micro_per_epoch and g.eager == 0 and g.failed is None
    assert 1 < g.captures < g.replays and len(g.graphs) == g.captures  # shapes repeat, and some differ
    assert graphed_losses == pytest.approx(eager_losses, abs=1e-6) and len(eager_losses) == 2 * eager.micro_per_epoch
    assert torch.allclose(graphed.trainables.prompt.weight, eager.trainables.prompt.weight, atol=1e-6)
    assert not torch.equal(graphed.trainables.prompt.weight, graphed.trainables.prompt.initial)  # it trained
    assert graphed.stats["forwards"] == eager.stats["forwards"] == g.replays
    assert graphed.stats["real"] == eager.stats["real"] and graphed.stats["padded"] == eager.stats["padded"]


def test_split_batches_train_like_whole_ones(tiny_llama, toy_data, tmp_path):
    """A graphed step split into groups of similar length (`split_overhead`, the default with CUDA graphs): the
    same losses and prompt as one forward per batch (the gradient is the same sum), in more forwards over
    fewer padded positions; every example in exactly one group."""
    cfg = TrainConfig(
        task="rte", model="tiny", tokens=4, epochs=2, batch_size=4, lr=0.1, data_dir=str(toy_data),
        compute_dtype="float32", scoring_strategy="padded", max_train=12,
    )  # fmt: skip
    data = prepare_data(cfg, tiny_llama, SINGLE)
    whole, split = (_graph_step(cfg, data, graphs=True) for _ in range(2))
    assert whole.split_overhead == 0  # on a CPU: no graphs at construction, no split
    split.split_overhead = 1  # toy rows of 22-24 tokens: splitting saves a few positions, worth it at this price
    order = list(range(12))
    groups = split.length_groups(order[:4])
    assert len(groups) > 1 and sorted(i for g in groups for i in g) == order[:4]
    whole_losses, split_losses = (_train_epochs(step, [order, order[::-1]]) for step in (whole, split))
    assert split.stats["forwards"] > whole.stats["forwards"] and split.stats["padded"] < whole.stats["padded"]
    assert split.stats["real"] == whole.stats["real"]
    assert split_losses == pytest.approx(whole_losses, abs=1e-6) and len(split_losses) == 2 * split.micro_per_epoch
    moved = float((whole.trainables.prompt.weight - whole.trainables.prompt.initial).norm())
    # Adam turns a rounding-sized gradient into a full step: compared to how far the prompt moved
    assert float((split.trainables.prompt.weight - whole.trainables.prompt.weight).norm()) < 1e-3 * moved


def test_shapes_beyond_the_graph_limit_run_eagerly(tiny_llama):
    from softprompt.training.cuda_graphs import EagerReplay, StepGraphs

    tok = tiny_llama.tokenizer
    encoded = encode_examples(EXAMPLES, tok, n_prompt=0)
    graphs = StepGraphs(torch.device("cpu"), capture=EagerReplay(), max_graphs=2)
    for k in (1, 2, 3, 1, 3):  # three shapes (example counts), the third over the limit
        host = collate(encoded[:k], tok.pad_token_id, bucket=64)
        assert graphs.run(lambda b: (b.labels.sum(),), host)[0] == host.labels.sum()
    assert (graphs.captures, graphs.replays, graphs.eager) == (2, 3, 2)


def test_a_failed_capture_falls_back_to_eager_steps(tiny_llama):
    from softprompt.training.cuda_graphs import StepGraphs

    class Refuses:
        def capture(self, step, warmup):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    tok = tiny_llama.tokenizer
    host = collate(encode_examples(EXAMPLES, tok, n_prompt=0), tok.pad_token_id, bucket=64)
    graphs = StepGraphs(torch.device("cpu"), capture=Refuses())
    with pytest.warns(RuntimeWarning, match="operation not permitted"):
        out = graphs.run(lambda b: (b.input_ids.sum(),), host)
    assert out[0] == host.input_ids.sum() and graphs.failed and graphs.eager == 1
    assert graphs.run(lambda b: (b.labels.sum(),), host)[0] == host.labels.sum() and graphs.eager == 2


def test_cuda_graphs_apply_to_prompts_on_cuda_only(tiny_llama, toy_data, tmp_path):
    cfg = TrainConfig(task="rte", model="tiny", tokens=4, epochs=1, data_dir=str(toy_data), cuda_graphs=True)
    data = prepare_data(cfg, tiny_llama, SINGLE)
    step = TrainStep(cfg, data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None)
    assert step.graphs is None and step.bucket == 0  # a CPU: no graphs, batches as always
    with pytest.raises(Exception, match="cuda_graphs must be true or false"):
        TrainConfig(task="rte", cuda_graphs="yes")


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs in the GPU session)")


def _cuda_step(tiny_backbone, toy_data, compute_dtype: str, graphs: bool) -> TrainStep:
    from softprompt.training.cuda_graphs import StepGraphs

    cfg = TrainConfig(
        task="rte", model="tiny", tokens=4, epochs=2, batch_size=2, grad_accum=2, lr=0.1, data_dir=str(toy_data),
        compute_dtype=compute_dtype, scoring_strategy="padded", max_train=12, log_every=100,
    )  # fmt: skip
    backbone = Backbone(
        model=tiny_backbone.model.to("cuda"), tokenizer=tiny_backbone.tokenizer, name="t", source="t", revision="t"
    )
    data = prepare_data(cfg, backbone, SINGLE)
    torch.manual_seed(0)
    step = TrainStep(cfg, data, build_trainables(cfg, data, SINGLE), SINGLE, scoring=None)
    step.graphs, step.bucket = (StepGraphs(torch.device("cuda")) if graphs else None), 2  # toy rows: two buckets
    return step


PAIRS = [0, 1, 2, 3, 4, 6, 5, 7, 8, 11, 9, 10]  # toy rows repeat every 4: pairs of one shape but different rows


@CUDA_ONLY
def test_cuda_graph_steps_match_eager_steps_on_a_gpu(tiny_backbone, toy_data, tmp_path):
    """The real capture (torch.cuda.CUDAGraph) in float32: two epochs of replayed steps learn the prompt that
    eager steps on the same bucketed batches learn (capture may pick other attention kernels: rounding only)."""
    eager, graphed = (_cuda_step(tiny_backbone, toy_data, "float32", g) for g in (False, True))
    eager_losses, graphed_losses = (_train_epochs(step, [PAIRS, PAIRS[::-1]]) for step in (eager, graphed))
    g = graphed.graphs
    assert g.failed is None and g.eager == 0 and g.replays == 2 * graphed.micro_per_epoch and 1 < g.captures < g.replays
    assert graphed_losses == pytest.approx(eager_losses, abs=1e-4)
    moved = (eager.trainables.prompt.weight - eager.trainables.prompt.initial.to("cuda")).norm()
    assert float((graphed.trainables.prompt.weight - eager.trainables.prompt.weight).norm()) < 0.01 * float(moved)


@CUDA_ONLY
def test_cuda_graph_replays_match_eager_steps_in_bfloat16(tiny_backbone, toy_data, tmp_path):
    """Under bf16 autocast a few steps of training amplify rounding, so each replay is compared with the eager
    step on the same batch and prompt: the same loss and gradient (to bf16 rounding), batch after batch."""
    step = _cuda_step(tiny_backbone, toy_data, "bfloat16", True)
    pad = step.data.backbone.tokenizer.pad_token_id
    for start in range(0, len(PAIRS), 2):
        host = collate([step.data.encoded[i] for i in PAIRS[start : start + 2]], pad, bucket=step.bucket)
        got = step.graphs.run(lambda b: step.loss_and_grads(b, 2), host, key=(2,))
        want = step.loss_and_grads(host.to("cuda"), 2)
        assert torch.allclose(got[0], want[0], rtol=2e-2, atol=2e-2)
        assert torch.nn.functional.cosine_similarity(got[1].flatten(), want[1].flatten(), dim=0) > 0.99
    g = step.graphs
    assert g.failed is None and g.replays == len(PAIRS) // 2 and 1 < g.captures < g.replays


@CUDA_ONLY
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bloom_kernels_on_a_gpu(tiny_backbone, dtype):
    """On CUDA (where they are the default) SDPA's ALiBi attention and the one-kernel GELU score like BLOOM's own
    kernels: to float rounding in float32, the same predictions and a close prompt gradient under bf16 autocast."""
    from softprompt.scoring.model import autocast_context

    tok, model = tiny_backbone.tokenizer, tiny_backbone.model.to("cuda")
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=3), tok.pad_token_id, bucket=16).to("cuda")
    prompt = torch.randn(3, model.config.hidden_size, device="cuda") * 0.5
    with autocast_context(torch.device("cuda"), getattr(torch, dtype)):
        own_kernels = ScoringOptions(strategy="padded", alibi_sdpa_devices=(), fused_gelu_devices=())
        own, own_grad = _scores_and_grad(model, prompt, batch, own_kernels)
        got, got_grad = _scores_and_grad(model, prompt, batch, ScoringOptions(strategy="padded"))
    real = ~torch.isinf(own)
    tol = 1e-4 if dtype == "float32" else 5e-2
    assert torch.equal(torch.isinf(got), ~real) and torch.allclose(got[real], own[real], atol=tol, rtol=tol)
    assert torch.equal(got.argmax(-1), own.argmax(-1))
    assert torch.nn.functional.cosine_similarity(got_grad.flatten(), own_grad.flatten(), dim=0) > 0.99

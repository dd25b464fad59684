"""Interpretation analyses with known answers: nearest tokens, survival, scripts, geometry, transfer, figures, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from softprompt.analysis.common import correlation
from softprompt.analysis.geometry import clamp_perplexity, drift, embed_2d, geometry_report, pairwise_distances, prompt_points
from softprompt.analysis.nearest import nearest_tokens, token_ranks
from softprompt.analysis.neighbors import analyze_neighbors, neighbors_report
from softprompt.analysis.projection import evaluate_projection, project_prompt
from softprompt.analysis.scripts import summarize_scripts, token_script
from softprompt.analysis.token_text import TokenReader, readable_token
from softprompt.analysis.transfer import (
    prompt_similarity,
    share_beating_no_prompt,
    similarity_vs_gain,
    transfer_matrix,
    transfer_report,
)
from softprompt.errors import SoftPromptError
from softprompt.evaluate import Evaluator
from softprompt.io import write_json
from softprompt.model.prompt import PromptInit, SoftPrompt, input_embedding_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


def make_run(path: Path, task: str, seed: int, weight, initial, init_ids, *, model="tiny", final=None, no_prompt=None) -> Path:
    """A complete run directory written by hand: prompt.safetensors + run.json (format 1)."""
    path.mkdir(parents=True)
    sp = SoftPrompt(weight, PromptInit("text", "test init", list(init_ids), seed), initial)
    sp.save(path / "prompt.safetensors")
    write_json(
        path / "run.json",
        {
            "format": 1,
            "status": "complete",
            "config": {"task": task, "seed": seed, "method": "prompt", "model": model},
            "prompt": {
                "n_tokens": sp.n_tokens,
                "dim": sp.dim,
                "init": {"method": "text", "text": "test init", "token_ids": list(init_ids)},
            },
            "final": {"accuracy": final},
            "baselines": {"no_prompt": {"accuracy": no_prompt}},
        },
    )
    return path


@pytest.fixture
def emb(tiny_llama):
    return input_embedding_matrix(tiny_llama.model, n_tokens=len(tiny_llama.tokenizer))


@pytest.fixture
def two_task_data(toy_data) -> Path:
    """The toy RTE folder plus a tiny BoolQ validation file: two target tasks."""
    d = toy_data / "boolq"
    d.mkdir()
    rows = [
        {"passage": "The cat sat on the mat.", "question": "did the cat sit", "label": True},
        {"passage": "The dog ran away quickly.", "question": "did the dog sit", "label": False},
        {"passage": "A charming movie.", "question": "is the movie good", "label": True},
    ]
    with open(d / "val.jsonl", "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(dict(r, idx=i)) + "\n")
    return toy_data


@pytest.fixture
def fake_runs(tmp_path, tiny_llama, emb):
    """Two RTE runs and one BoolQ run on the tiny model, each initialised from known token rows."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for name, task, seed, ids, noise in (
        ("rte-0", "rte", 0, [10, 20, 30, 40], 0.0),
        ("rte-1", "rte", 1, [10, 20, 30, 40], 0.05),
        ("boolq-0", "boolq", 0, [50, 60, 70, 80], 0.05),
    ):
        initial = emb[ids].clone()
        weight = initial + noise * torch.randn(initial.shape, generator=gen)
        out.append(
            make_run(
                tmp_path / "runs" / name,
                task,
                seed,
                weight,
                initial,
                ids,
                final=0.5 + seed / 10,
                no_prompt=0.5 if task == "rte" else 0.4,
            )
        )
    return out


# ----------------------------------------------------------------------------- nearest tokens


def test_known_token_rows_come_back_first_with_cosine_one():
    torch.manual_seed(0)
    E = torch.randn(500, 16)
    ids = [3, 77, 123, 499]
    got, sims = nearest_tokens(E[ids], E, k=3)
    assert got[:, 0].tolist() == ids
    torch.testing.assert_close(sims[:, 0], torch.ones(4), atol=1e-5, rtol=0)
    assert (sims[:, 1] < sims[:, 0]).all()
    # chunked search equals one matmul; both equal a brute-force reference
    chunked_ids, chunked_sims = nearest_tokens(E[ids], E, k=3, chunk_size=37)
    assert torch.equal(chunked_ids, got)
    ref = torch.nn.functional.normalize(E[ids], dim=1) @ torch.nn.functional.normalize(E, dim=1).T
    assert torch.equal(ref.topk(3, dim=1).indices, got)
    # dot product ranks by raw inner product
    dot_ids, dot_sims = nearest_tokens(E[ids], E, k=2, metric="dot", chunk_size=64)
    ref_dot = (E[ids] @ E.T).topk(2, dim=1)
    assert torch.equal(dot_ids, ref_dot.indices)
    torch.testing.assert_close(dot_sims, ref_dot.values)


def test_token_ranks_and_errors():
    torch.manual_seed(0)
    E = torch.randn(200, 8)
    ids = [5, 6, 7]
    assert token_ranks(E[ids], E, ids) == [1, 1, 1]
    # the nearest token of row 5 is 5 itself, so token 6 cannot be first for that row
    assert token_ranks(E[ids], E, [6, 6, 6])[0] > 1
    with pytest.raises(SoftPromptError, match="metric"):
        nearest_tokens(E[ids], E, metric="euclid")
    with pytest.raises(SoftPromptError, match="width"):
        nearest_tokens(torch.randn(2, 9), E)


def test_unchanged_prompt_survives_fully(tiny_llama, emb):
    ids = [10, 20, 30, 10]
    prompt = emb[ids].clone()
    a = analyze_neighbors(prompt, prompt.clone(), ids, emb, tiny_llama.tokenizer, k=3)
    s = a["summary"]
    assert s["survival_rate"] == 1.0 and s["top1_is_initial_rate"] == 1.0
    assert s["surviving_positions"] == [0, 1, 2, 3]
    assert len(s["surviving_words"]) == 3  # token 10 appears twice, listed once
    assert s["mean_cos_to_initial"] == pytest.approx(1.0, abs=1e-6)
    for pos, i in zip(a["positions"], ids, strict=True):
        assert pos["tokens"][0]["id"] == i and pos["initial_rank"] == 1 and pos["survived"]
        assert pos["l2_to_initial"] == pytest.approx(0.0, abs=1e-6)
    d = drift(prompt, prompt.clone())
    assert d["frobenius"] == 0.0 and d["mean_token_cosine"] == pytest.approx(1.0)


def test_moved_prompt_loses_its_initial_token(tiny_llama, emb):
    ids = [10, 20]
    prompt = emb[[10, 99]].clone()  # position 1 now sits exactly on token 99
    a = analyze_neighbors(prompt, emb[ids], ids, emb, tiny_llama.tokenizer, k=1)
    assert a["positions"][0]["survived"] and not a["positions"][1]["survived"]
    assert a["positions"][1]["tokens"][0]["id"] == 99 and a["positions"][1]["initial_rank"] > 1
    assert a["summary"]["survival_rate"] == 0.5
    # random init: no initial tokens, token fields are None but the vector comparison still works
    r = analyze_neighbors(prompt, emb[ids], [], emb, tiny_llama.tokenizer, k=2)
    assert r["summary"]["survival_rate"] is None and r["positions"][0]["survived"] is None
    assert r["positions"][0]["cos_to_initial"] == pytest.approx(1.0, abs=1e-6)


def test_drift_and_displacement_name_the_token_moved_toward(tiny_llama, emb):
    a_id, b_id = 10, 99
    init = emb[[a_id, 20]].clone()
    final = init.clone()
    final[0] = init[0] + 0.3 * (emb[b_id] - init[0])  # position 0 moved a third of the way toward token B
    res = analyze_neighbors(final, init, [a_id, 20], emb, tiny_llama.tokenizer, k=3)
    p0, p1 = res["positions"]
    assert p0["tokens"][0]["id"] == a_id and p0["initial_rank"] == 1 and not p0["top1_changed"]
    assert p0["displacement_tokens"][0]["id"] == b_id
    assert p0["displacement_tokens"][0]["token"] == readable_token(tiny_llama.tokenizer, b_id)
    cos = torch.nn.functional.cosine_similarity(emb[b_id] - emb[a_id], emb[b_id], dim=0)
    assert p0["displacement_tokens"][0]["similarity"] == pytest.approx(float(cos), abs=1e-5)
    # drift by hand: the step, relative to the init vector and to the distance to A's nearest other token
    step = 0.3 * (emb[b_id] - emb[a_id]).norm()
    others = torch.cat([emb[:a_id], emb[a_id + 1 :]])
    gap = (others - emb[a_id]).norm(dim=1).min()
    d = p0["drift"]
    assert d["norm"] == pytest.approx(float(step), rel=1e-5) and d["gap"] == pytest.approx(float(gap), rel=1e-5)
    assert d["relative_to_init"] == pytest.approx(float(step / emb[a_id].norm()), rel=1e-5)
    assert d["relative_to_gap"] == pytest.approx(float(step / gap), rel=1e-5)
    # an unmoved position: no displacement to read, zero drift, its top-1 kept
    assert p1["displacement_tokens"] is None and p1["drift"]["norm"] == 0.0 and p1["drift"]["relative_to_gap"] == 0.0
    s = res["summary"]
    assert s["mean_relative_drift"] == pytest.approx(d["relative_to_init"] / 2, rel=1e-5)
    assert s["mean_relative_to_gap"] == pytest.approx(d["relative_to_gap"] / 2, rel=1e-5)
    assert s["top1_changed_positions"] == [] and s["top1_changed_rate"] == 0.0
    assert s["common_displacement_tokens"][0] == {"token": readable_token(tiny_llama.tokenizer, b_id), "positions": 1}
    assert s["survival_rate"] == 1.0  # the existing keys are unchanged


def test_drift_past_the_gap_and_without_an_initial_matrix(tiny_llama, emb):
    init = emb[[10, 20]].clone()
    final = emb[[10, 99]].clone()  # position 1 jumped onto token 99
    res = analyze_neighbors(final, init, [10, 20], emb, tiny_llama.tokenizer, k=2)
    p1 = res["positions"][1]
    assert p1["top1_changed"] and p1["drift"]["relative_to_gap"] >= 1.0  # at least as far as the nearest other token
    assert p1["displacement_tokens"][0]["similarity"] <= 1.0
    assert res["summary"]["top1_changed_positions"] == [1] and res["summary"]["past_gap_rate"] == 0.5
    # a random init (no token ids): the gap is the distance to the nearest vocabulary row at all
    rand = torch.randn(2, emb.shape[1], generator=torch.Generator().manual_seed(0)) * 0.1
    r = analyze_neighbors(rand + 0.01, rand, [], emb, tiny_llama.tokenizer, k=2)
    assert r["positions"][0]["drift"]["gap"] == pytest.approx(float((emb - rand[0]).norm(dim=1).min()), rel=1e-5)
    assert r["positions"][0]["initial_rank"] is None
    # no initial matrix: the new fields are None, nothing fails
    n = analyze_neighbors(final, None, None, emb, tiny_llama.tokenizer, k=2)
    assert n["positions"][0]["drift"] is None and n["summary"]["mean_relative_drift"] is None


def test_readable_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    reader = TokenReader(tok)
    assert reader.byte_level
    assert readable_token(tok, tok.convert_tokens_to_ids("<pad>")) == "<pad> [special]"
    assert readable_token(tok, tok.convert_tokens_to_ids("Ġcat")) == "␣cat"
    # byte 0xE4 alone (first byte of 你) is a fragment; the byte-level alphabet maps it to 'ä'
    frag = tok.convert_tokens_to_ids("ä")
    assert readable_token(tok, frag) == "<0xE4>"
    assert reader.describe([frag])[0]["script"] == "byte fragment"
    newline = tok.convert_tokens_to_ids("Ċ")
    assert readable_token(tok, newline) == "\\n"


# ----------------------------------------------------------------------------- scripts


@pytest.mark.parametrize(
    ("token", "script"),
    [
        ("hello", "Latin"),
        (" hello", "Latin"),
        ("你好", "Han"),
        ("привет", "Cyrillic"),
        ("Ελλάδα", "Greek"),
        ("مرحبا", "Arabic"),
        ("नमस्ते", "Devanagari"),
        ("한국", "Hangul"),
        ("カタカナ", "Hiragana/Katakana"),
        ("שלום", "Hebrew"),
        ("สวัสดี", "Thai"),
        ("123", "digits"),
        ("!?", "punctuation"),
        ("  ", "whitespace"),
        (b"\xe4\xbd", "byte fragment"),
        ("<0xE4>", "byte fragment"),
        ("café", "Latin"),
    ],
)
def test_token_script_table(token, script):
    assert token_script(token) == script
    assert token_script(token, special=True) == "special"


def test_script_summary_per_prompt_and_task():
    def analysis(task, scripts):
        return {"task": task, "positions": [{"tokens": [{"script": s} for s in row]} for row in scripts]}

    out = summarize_scripts(
        {"a": analysis("rte", [["Latin", "Han"], ["Latin", "Latin"]]), "b": analysis("rte", [["Han", "digits"]])},
        vocabulary={"Latin": 90, "Han": 10},
    )
    assert out["prompts"]["a"]["top_k"] == {"Latin": 3, "Han": 1}
    assert out["prompts"]["b"]["top_1"] == {"Han": 1}
    assert out["tasks"]["rte"]["top_k"] == {"Han": 2, "Latin": 3, "digits": 1} or out["tasks"]["rte"]["top_k"] == {
        "Latin": 3,
        "Han": 2,
        "digits": 1,
    }
    assert out["tasks"]["rte"]["top_k_over_vocabulary"]["Han"] == pytest.approx((2 / 6) / 0.1)


# ----------------------------------------------------------------------------- geometry


def test_embed_2d_shapes_and_determinism():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 20))
    for method in ("tsne", "pca"):
        a = embed_2d(x, method, seed=3)
        b = embed_2d(x, method, seed=3)
        assert a.shape == (12, 2) and np.array_equal(a, b)
    assert embed_2d(x[:2], "tsne").shape == (2, 2)  # perplexity clamped below n
    assert embed_2d(x[:1], "tsne").tolist() == [[0.0, 0.0]]
    assert clamp_perplexity(30, 5) == pytest.approx(4 / 3) and clamp_perplexity(30, 1000) == 30


def test_prompt_points_levels_and_dedup():
    p = [torch.randn(3, 4), torch.randn(3, 4)]
    init = torch.randn(3, 4)
    pts, meta = prompt_points(p, [init, init.clone()], "token")
    assert pts.shape == (9, 4)  # 6 soft tokens + 3 tokens of the one distinct initial prompt
    assert [m["kind"] for m in meta].count("initial") == 3 and meta[-1]["initial_of"] == [0, 1]
    pts, _ = prompt_points(p, [init, torch.randn(3, 4)], "prompt")
    assert pts.shape == (4, 12)
    with pytest.raises(SoftPromptError, match="one shape"):
        prompt_points([torch.randn(3, 4), torch.randn(2, 4)], [torch.randn(3, 4), torch.randn(2, 4)], "prompt")


def test_pairwise_distances_known_values():
    a = torch.zeros(2, 3)
    b = torch.zeros(2, 3)
    b[0, 0] = 3.0
    b[1, 1] = 4.0
    a[0, 0] = a[1, 1] = 1.0
    d = pairwise_distances([a, b, a.clone()])
    assert d["frobenius"][0][1] == pytest.approx(float((b - a).norm()))
    assert d["frobenius"][0][2] == 0.0
    assert d["mean_token_cosine"][0][1] == pytest.approx(1.0)  # same directions, different lengths
    with pytest.raises(SoftPromptError, match="one shape"):
        pairwise_distances([a, torch.zeros(3, 3)])


def test_correlation_matches_scipy():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [2.0, 1.0, 4.0, 3.0, 7.0, 5.0]
    c = correlation(x, y)
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    assert c["pearson_r"] == pytest.approx(pr.statistic) and c["pearson_p"] == pytest.approx(pr.pvalue)
    assert c["spearman_rho"] == pytest.approx(sr.statistic) and c["spearman_p"] == pytest.approx(sr.pvalue)
    assert c["n"] == 6
    assert correlation([1, 2], [3, 4])["pearson_r"] is None
    assert correlation([1, 2, 3], [5, 5, 5])["spearman_rho"] is None


def test_geometry_report_writes_json_and_figures(fake_runs, tmp_path):
    out = tmp_path / "geo"
    rep = geometry_report(fake_runs, out, seed=0)
    assert json.loads((out / "geometry.json").read_text())["level"] == "token"
    drifts = {r["id"]: r["drift"]["frobenius"] for r in rep["runs"]}
    assert drifts["rte-s0"] == 0.0 and drifts["rte-s1"] > 0
    assert rep["within_task"]["rte"]["frobenius_stats"]["pairs"] == 1
    assert [e["task"] for e in rep["summary"]["equidistance"]] == ["rte"]
    assert {d["task"] for d in rep["summary"]["task_drift"]} == {"rte", "boolq"}
    # 3 runs x 4 tokens + 2 distinct initial prompts x 4 tokens
    assert len(rep["projections"]["tsne"]["points"]) == 20
    for name in ("tsne", "pca", "drift", "distances"):
        assert _is_png(rep["figures"][name])
    again = geometry_report(fake_runs, None, seed=0)
    assert again["projections"]["tsne"]["points"] == rep["projections"]["tsne"]["points"]


# ----------------------------------------------------------------------------- transfer


def test_prompt_similarity_and_length_mismatch():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    s = prompt_similarity([a, b])
    assert s["frobenius"][0][1] == pytest.approx(float((b - a).norm()), rel=1e-6)
    pooled = torch.nn.functional.cosine_similarity(a.mean(0), b.mean(0), dim=0)
    assert s["pooled_cosine"][0][1] == pytest.approx(float(pooled), rel=1e-6)
    tok = torch.nn.functional.cosine_similarity(a, b, dim=1).mean()
    assert s["token_cosine"][1][0] == pytest.approx(float(tok), rel=1e-6)
    with pytest.raises(SoftPromptError, match="pooled_cosine"):
        prompt_similarity([a, torch.randn(4, 5)])
    assert len(prompt_similarity([a, torch.randn(4, 5)], metrics=("pooled_cosine",))["pooled_cosine"]) == 2


def test_share_and_similarity_correlation_on_constructed_matrix():
    m = {
        "runs": ["a0", "a1", "b0", "c0"],
        "source_tasks": ["a", "a", "b", "c"],
        "tasks": ["a", "b", "c"],
        "gain": [[0.3, 0.1, -0.1], [0.2, 0.2, 0.05], [0.0, 0.4, 0.1], [0.1, -0.2, 0.5]],
    }
    share = share_beating_no_prompt(m)
    assert share["transfers"] == 8 and share["beat_no_prompt"] == 5 and share["ties"] == 1
    sim = np.arange(16, dtype=float).reshape(4, 4).tolist()
    c = similarity_vs_gain(m, {"pooled_cosine": sim})["pooled_cosine"]
    xs = [p["similarity"] for p in c["pairs"]]
    ys = [p["gain"] for p in c["pairs"]]
    assert c["n"] == 8 and c["pearson_r"] == pytest.approx(stats.pearsonr(xs, ys).statistic)
    # a0 on task b: mean similarity to the b prompt (index 2)
    first = c["pairs"][0]
    assert (first["run"], first["target"], first["similarity"]) == ("a0", "b", 2.0)


def test_transfer_matrix_on_tiny_model(tiny_llama, two_task_data, fake_runs, tmp_path):
    ev = Evaluator(tiny_llama, data_dir=two_task_data)
    m = transfer_matrix(ev, fake_runs, ["rte", "boolq"])
    assert m["tasks"] == ["rte", "boolq"] and len(m["accuracy"]) == 3 and all(len(r) == 2 for r in m["accuracy"])
    direct = ev.evaluate("boolq", SoftPrompt.load(fake_runs[0] / "prompt.safetensors").weight.detach())
    assert m["accuracy"][0][1] == direct.accuracy
    assert m["no_prompt"]["rte"] == ev.evaluate("rte", None).accuracy
    for row, gains in zip(m["accuracy"], m["gain"], strict=True):
        assert gains == pytest.approx([a - m["no_prompt"][t] for a, t in zip(row, m["tasks"], strict=True)])
    assert m["own_task"]["rte-s0"] == m["accuracy"][0][0]
    rep = transfer_report(ev, fake_runs, ["rte", "boolq"], tmp_path / "tr")
    saved = json.loads((tmp_path / "tr" / "transfer.json").read_text())
    assert saved["matrix"]["accuracy"] == rep["matrix"]["accuracy"]
    assert rep["share_beating_no_prompt"]["transfers"] == 3 and rep["summary"]["n_transfers"] == 3
    assert [c["similarity"] for c in rep["summary"]["correlations"]] == ["frobenius", "pooled_cosine", "token_cosine"]
    assert set(rep["similarity"]) >= {"frobenius", "pooled_cosine", "token_cosine"}
    for path in rep["figures"].values():
        assert _is_png(path)


def test_memoizing_evaluator_scores_each_prompt_once(tiny_llama, two_task_data, fake_runs, monkeypatch):
    """A study's analyses score a prompt on its own task twice (projection, transfer matrix) and no prompt once per
    run: the memoizing evaluator (a frozen backbone) scores each distinct (task, prompt values, hard prompt) once,
    with the same result; a changed value, another hard prompt or another subsample is scored anew."""
    import softprompt.evaluate as evaluate_module

    calls = []
    real = evaluate_module.choice_scores
    monkeypatch.setattr(evaluate_module, "choice_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain, memo = Evaluator(tiny_llama, data_dir=two_task_data), Evaluator(tiny_llama, data_dir=two_task_data, memoize=True)
    w = SoftPrompt.load(fake_runs[0] / "prompt.safetensors").weight.detach()
    first = memo.evaluate("rte", w)
    assert memo.evaluate("rte", w.clone()) is first and len(calls) == 1  # same values: one scoring
    assert memo.evaluate("rte", w.to(torch.bfloat16)) is not first  # other numbers
    changed = w.clone()
    changed[0, 0] += 1.0
    for args, kw in [
        (("rte", changed), {}),
        (("rte", None), {}),
        (("rte", None), {"hard_prompt": "Yes?"}),
        (("rte", w), {"limit": 2}),
    ]:
        n = len(calls)
        memo.evaluate(*args, **kw)
        memo.evaluate(*args, **kw)
        assert len(calls) == n + 1, (args, kw)
    assert plain.evaluate("rte", w).accuracy == first.accuracy
    n = len(calls)
    plain.evaluate("rte", w)
    assert len(calls) == n + 1  # not memoizing: every call scores
    n = len(calls)
    transfer_matrix(memo, fake_runs[:1], ["rte", "boolq"])
    assert len(calls) == n + 2  # only the prompt on boolq and no prompt on boolq are new


def test_transfer_matrix_names_a_custom_task_by_its_name(tiny_llama, two_task_data, fake_runs, emb, tmp_path):
    """A run of a custom task names it by its .toml path, the matrix's column by the task's name: its prompts on
    its own task are not cross-task transfers (a demo study counted 9 transfers between two tasks x 3 seeds)."""
    task_dir = tmp_path / "mini"
    task_dir.mkdir()
    rows = [{"text": t, "label": lab} for t, lab in (("the cat sat", "yes"), ("the dog ran", "no"), ("a good movie", "yes"))]
    for split in ("train", "validation"):
        (task_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    toml = task_dir / "mini.toml"
    toml.write_text(
        'name = "mini"\ndescription = "Yes or no?"\ntemplate = "{text}\\nAnswer:"\nlabel_words = ["yes", "no"]\n'
        'label_field = "label"\n[data]\ntrain = "train.jsonl"\nvalidation = "validation.jsonl"\n'
    )
    custom = make_run(tmp_path / "runs" / "mini-0", str(toml), 0, emb[[1, 2, 3, 4]].clone(), emb[[1, 2, 3, 4]], [1, 2, 3, 4])
    ev = Evaluator(tiny_llama, data_dir=two_task_data)
    runs = [fake_runs[0], custom]
    m = transfer_matrix(ev, runs, ["rte", str(toml)])
    assert m["tasks"] == ["rte", "mini"] and m["source_tasks"] == ["rte", "mini"]
    assert m["own_task"]["mini-s0"] == m["accuracy"][1][1]  # its own column, not a separate evaluation
    assert share_beating_no_prompt(m)["transfers"] == 2  # rte -> mini and mini -> rte only


# ----------------------------------------------------------------------------- neighbours report, projection, figures


def test_neighbors_report_and_projection(tiny_llama, toy_data, fake_runs, tmp_path):
    ev = Evaluator(tiny_llama, data_dir=toy_data)
    out = tmp_path / "nb"
    rep = neighbors_report(tiny_llama, fake_runs[:2], 3, out, project=True, evaluator=ev)
    assert json.loads((out / "neighbors.json").read_text())["k"] == 3
    r0 = rep["runs"]["rte-s0"]
    assert r0["summary"]["survival_rate"] == 1.0 and r0["task"] == "rte"
    acc = r0["projection"]["accuracy"]
    # an unchanged prompt is its own exact projection
    assert r0["projection"]["projection"]["token_ids"] == [10, 20, 30, 40]
    assert acc["projected_soft"] == acc["soft"]
    assert set(acc) == {"soft", "projected_soft", "projected_text", "no_prompt"}
    assert "Latin" in rep["scripts"]["vocabulary"]
    assert rep["summary"]["survival_by_task"]["rte"]["runs"] == 2
    assert [p["run"] for p in rep["summary"]["projection"]] == ["rte-s0", "rte-s1"]
    for path in rep["figures"].values():
        assert _is_png(path)


def test_neighbors_report_summarises_drift_per_task(tiny_llama, fake_runs, tmp_path):
    rep = neighbors_report(tiny_llama, fake_runs, 3, tmp_path / "nb", figures=False)
    still, moved = rep["runs"]["rte-s0"], rep["runs"]["rte-s1"]  # rte-0 is its init; rte-1 has noise added
    assert still["summary"]["mean_relative_drift"] == 0.0 and still["positions"][0]["displacement_tokens"] is None
    assert moved["summary"]["mean_relative_drift"] > 0 and len(moved["positions"][0]["displacement_tokens"]) == 3
    rte = rep["summary"]["drift_by_task"]["rte"]
    assert rte["runs"] == 2
    assert rte["mean_relative_drift"] == pytest.approx(moved["summary"]["mean_relative_drift"] / 2)
    assert rte["displacement_tokens"][0] == moved["summary"]["common_displacement_tokens"][0]["token"]
    written = json.loads((tmp_path / "nb" / "neighbors.json").read_text())
    assert written["runs"]["rte-s1"]["positions"][0]["drift"]["relative_to_gap"] > 0


def test_the_nearest_token_figure_is_bounded_whatever_k_and_length(tmp_path):
    """`neighbors --k 100000` drew a figure 2.3 inches per neighbour (matplotlib: "Image size too large"): the figure
    shows at most FIGURE_K neighbours of FIGURE_ROWS soft tokens, says so, and the JSON keeps every one."""
    import struct

    from softprompt.analysis.figures import FIGURE_K, FIGURE_ROWS, nearest_token_figure

    k, n = 60, FIGURE_ROWS + 40
    tokens = [{"id": j, "token": f"t{j}", "similarity": 1 - j / k} for j in range(k)]
    analysis = {"k": k, "metric": "cosine", "summary": {"survival_rate": 0.5},
                "positions": [{"position": i, "initial_id": 0, "initial_token": "t0", "tokens": tokens} for i in range(n)]}  # fmt: skip
    path = nearest_token_figure(analysis, tmp_path / "n.png")
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    assert width < 2.3 * (FIGURE_K + 3) * 100 and height < 0.42 * (FIGURE_ROWS + 6) * 100, (width, height)
    assert len(analysis["positions"][0]["tokens"]) == k  # the analysis itself is left whole


def test_k_is_checked_against_the_vocabulary(tiny_llama, fake_runs):
    from softprompt.analysis.neighbors import neighbors_report

    vocabulary = tiny_llama.vocab_size
    for k in (0, vocabulary + 1):
        with pytest.raises(SoftPromptError, match=rf"k {k}: expected a whole number from 1 to the vocabulary size, {vocabulary}"):
            neighbors_report(tiny_llama, fake_runs[:1], k)


def test_figures_survive_cjk_and_dollar_tokens(tmp_path):
    from softprompt.analysis.figures import heatmap, nearest_token_figure, scatter_2d, similarity_scatter

    analysis = {
        "metric": "cosine",
        "summary": {"survival_rate": 0.5},
        "positions": [
            {
                "position": 0,
                "initial_id": 1,
                "initial_token": "␣entail",
                "tokens": [{"id": 1, "token": "␣entail", "similarity": 0.9}, {"id": 2, "token": "你好", "similarity": 0.5}],
            },
            {
                "position": 1,
                "initial_id": 3,
                "initial_token": "$x$",
                "tokens": [{"id": 4, "token": "नमस्ते", "similarity": 0.4}, {"id": 5, "token": "<0xE4>", "similarity": 0.3}],
            },
        ],
    }
    assert _is_png(nearest_token_figure(analysis, tmp_path / "n.png", title="rte $5"))
    pts = [
        {"x": 0.0, "y": 1.0, "kind": "soft", "task": "rte", "seed": 0},
        {"x": 1.0, "y": 0.0, "kind": "initial", "task": "rte", "seed": None},
    ]
    assert _is_png(scatter_2d(pts, tmp_path / "s.png", title="t-SNE"))
    assert _is_png(heatmap([[0.1, None], [0.3, 0.4]], ["a", "b"], ["x", "你"], tmp_path / "h.png", center=0.0))
    assert _is_png(
        similarity_scatter([0.1, 0.2, 0.3], [0.0, 0.1, 0.05], tmp_path / "c.png", r=0.5, p=0.6, labels=["a", "b", "c"])
    )


# ----------------------------------------------------------------------------- CLI


def test_cli_geometry_neighbors_transfer(tiny_llama, two_task_data, fake_runs, tmp_path, capsys):
    from softprompt.cli import main

    model_dir = tmp_path / "tiny-model"
    tiny_llama.model.save_pretrained(model_dir)
    tiny_llama.tokenizer.save_pretrained(model_dir)
    runs = [str(p) for p in fake_runs]
    assert main(["geometry", *runs, "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "geometry.json").exists() and (tmp_path / "g" / "tsne.png").exists()
    common = ["--model", str(model_dir), "--data-dir", str(two_task_data), "--compute-dtype", "float32", "--quiet"]
    assert main(["neighbors", runs[0], "--project", "--out", str(tmp_path / "n"), *common]) == 0
    assert (tmp_path / "n" / "neighbors.json").exists()
    assert main(["transfer", *runs, "--tasks", "rte,boolq", "--out", str(tmp_path / "t"), "--max-eval", "3", *common]) == 0
    assert json.loads((tmp_path / "t" / "transfer.json").read_text())["matrix"]["limit"] == 3
    printed = capsys.readouterr().out
    assert "no prompt" in printed and "projected text" in printed
    assert main(["neighbors", runs[0], "--task", "rte", "--out", str(tmp_path / "x"), *common]) == 2


# ----------------------------------------------------------------------------- real model


@pytest.mark.integration
def test_smollm_text_init_survives_and_projects_to_itself(smollm, data_dir):
    from softprompt.model.prompt import init_prompt

    tok = smollm.tokenizer
    sp = init_prompt(smollm.model, tok, 8, "text", text="Does the hypothesis entail, or not entail the premise?")
    E = input_embedding_matrix(smollm.model, n_tokens=len(tok))
    a = analyze_neighbors(sp.weight, sp.initial, sp.init.token_ids, E, tok, k=3)
    assert a["summary"]["survival_rate"] == 1.0
    assert "␣entail" in a["summary"]["surviving_words"]
    proj = project_prompt(sp.weight, E, tok)
    assert proj["token_ids"] == sp.init.token_ids and proj["text"].startswith("Does the hypothesis entail")
    res = evaluate_projection(Evaluator(smollm, data_dir=data_dir), "rte", sp.weight, E, limit=2, no_prompt=False)
    assert res["n"] == 2 and res["accuracy"]["projected_soft"] == res["accuracy"]["soft"]

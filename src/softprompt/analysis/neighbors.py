"""Read a soft prompt through the vocabulary: nearest tokens, surviving words, projected prompts.

A soft token is a point in the model's input-embedding space. Its nearest vocabulary tokens (by
cosine, as in the study) are the usual way to "read" it, and an initial word that is still among
them after training has "survived" (the study's "entailed", "accurate").

Such readouts are not faithful explanations: Khashabi et al. (2022, prompt waywardness) show a
continuous prompt can solve a task while its nearest-token projection reads as unrelated text. So
the projection is also *measured*: each soft token is replaced by its nearest token and the result
is evaluated both as text (a hard prompt, re-tokenized) and as those tokens' embedding rows (the
exact projection), next to the soft prompt itself.

The embedding matrix is the output of `model.get_input_embeddings()` over all ids, not the raw
weight: Gemma scales embeddings by sqrt(d) inside that module, and prompts live on that scale.
"""

from __future__ import annotations

import codecs
import functools
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.analysis.common import as_runs, json_safe, run_labels, run_meta
from softprompt.analysis.results import NeighborsResult
from softprompt.analysis.scripts import script_counts, summarize_scripts, token_script
from softprompt.errors import SoftPromptError
from softprompt.prompt import input_embedding_matrix
from softprompt.reparam import special_token_ids

METRICS = ("cosine", "dot")
_EPS = 1e-12
VISIBLE_SPACE = "\u2423"  # ␣


# ----------------------------------------------------------------------------- embeddings and search


def _check(prompt: torch.Tensor, embeddings: torch.Tensor, metric: str) -> None:
    if metric not in METRICS:
        raise SoftPromptError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    if prompt.dim() != 2 or embeddings.dim() != 2:
        raise SoftPromptError(
            f"expected (n, d) prompt and (V, d) embeddings, got {tuple(prompt.shape)} and {tuple(embeddings.shape)}"
        )
    if prompt.shape[1] != embeddings.shape[1]:
        raise SoftPromptError(
            f"prompt width {prompt.shape[1]} != embedding width {embeddings.shape[1]}: the prompt belongs to another model"
        )


def _score_chunks(prompt: torch.Tensor, embeddings: torch.Tensor, metric: str, chunk_size: int | None):
    """Yield (start, scores[n, chunk]) over the vocabulary: one matmul per chunk, E is never copied whole."""
    p = prompt.detach().to(device=embeddings.device, dtype=torch.float32)
    if metric == "cosine":
        p = p / p.norm(dim=1, keepdim=True).clamp_min(_EPS)
    vocab = embeddings.shape[0]
    if chunk_size is None:
        chunk_size = max(4096, (1 << 26) // max(p.shape[0], 1))  # n x chunk scores stay <= 256 MiB
    for start in range(0, vocab, chunk_size):
        block = embeddings[start : start + chunk_size]
        if block.dtype != torch.float32:
            block = block.float()
        scores = p @ block.T
        if metric == "cosine":
            scores /= torch.linalg.vector_norm(block, dim=1).clamp_min(_EPS)
        yield start, scores


@torch.no_grad()
def nearest_tokens(
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    k: int = 3,
    metric: str = "cosine",
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k vocabulary tokens nearest each prompt row: (ids (n, k) long, similarities (n, k) float32).

    One batched matmul of the (n, d) prompt against the (V, d) matrix (in vocabulary chunks only when
    n x V would be large), so a 250k vocabulary takes well under a second. `metric` is `cosine` (the
    study's choice, scale-free) or `dot` (what the first attention layer roughly sees).
    """
    _check(prompt, embeddings, metric)
    k = min(int(k), embeddings.shape[0])
    if k < 1:
        raise SoftPromptError("k must be at least 1")
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start, scores in _score_chunks(prompt, embeddings, metric, chunk_size):
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)
        i = i + start
        if best_s is None:
            best_s, best_i = s, i
        else:
            s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
            best_s, pick = s.topk(k, dim=1)
            best_i = i.gather(1, pick)
    assert best_s is not None and best_i is not None
    return best_i.cpu(), best_s.cpu()


@torch.no_grad()
def token_ranks(
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    token_ids: Sequence[int],
    metric: str = "cosine",
    *,
    chunk_size: int | None = None,
) -> list[int]:
    """Rank (1 = nearest) of token_ids[i] among all vocabulary tokens for prompt row i.

    Tells how far an initial word fell: rank 1 means it is still the nearest token, rank 4 means it
    just dropped out of the top 3. Ties within 1e-6 count in the token's favour.
    """
    _check(prompt, embeddings, metric)
    if len(token_ids) != prompt.shape[0]:
        raise SoftPromptError(f"{len(token_ids)} token ids for {prompt.shape[0]} prompt rows")
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=embeddings.device)
    p = prompt.detach().to(device=embeddings.device, dtype=torch.float32)
    rows = embeddings[ids].float()
    target = (p * rows).sum(1)
    if metric == "cosine":
        target = target / (p.norm(dim=1) * rows.norm(dim=1)).clamp_min(_EPS)
    tol = 1e-6 * target.abs().clamp_min(1.0)
    above = torch.zeros(prompt.shape[0], dtype=torch.long, device=embeddings.device)
    for _, scores in _score_chunks(prompt, embeddings, metric, chunk_size):
        above += (scores > (target + tol)[:, None]).sum(1)
    return (above + 1).cpu().tolist()


# ----------------------------------------------------------------------------- token text


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet: printable stand-in character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _hex_errors(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("softprompt-hex", _hex_errors)


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return "ByteLevel" in repr(backend.decoder) or "ByteLevel" in repr(backend.pre_tokenizer)
    return hasattr(tokenizer, "byte_decoder")


class TokenReader:
    """Turns token ids into (bytes, display text, script) for one tokenizer, caching its facts.

    Byte-level BPE (GPT-2, SmolLM2, BLOOM) stores bytes as stand-in characters (`Ġ` = space);
    SentencePiece (Gemma, Llama-2) uses `▁` for a space and `<0xNN>` byte-fallback tokens. Both are
    mapped back to real bytes, so a token holding half of a UTF-8 character shows as `<0xE4>` and is
    tagged as a byte fragment instead of printing as garbage.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_level = _is_byte_level(tokenizer)
        self.special = special_token_ids(tokenizer)
        self.decoder = _byte_decoder()

    def raw(self, ids: Sequence[int]) -> list[str | None]:
        toks = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        return list(toks) if isinstance(toks, list) else [toks]

    def to_bytes(self, raw: str) -> bytes:
        if self.byte_level and all(c in self.decoder for c in raw):
            return bytes(self.decoder[c] for c in raw)
        if len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">"):
            try:
                return bytes([int(raw[3:5], 16)])
            except ValueError:
                pass
        return raw.replace("\u2581", " ").encode("utf-8")

    def describe(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """For each id: display text, script tag and whether it is special."""
        out = []
        for i, raw in zip(ids, self.raw(ids), strict=True):
            i = int(i)
            if raw is None:
                out.append({"token": f"[unused id {i}]", "script": "other", "special": False})
                continue
            if i in self.special:
                out.append({"token": f"{raw} [special]", "script": token_script(raw, special=True), "special": True})
                continue
            data = self.to_bytes(raw)
            out.append({"token": visible(data), "script": token_script(data), "special": False})
        return out

    def readable(self, token_id: int) -> str:
        return self.describe([token_id])[0]["token"]


def visible(data: bytes) -> str:
    """Token bytes as printable text: spaces as ␣, \\n and \\t escaped, invalid UTF-8 and control bytes as <0xNN>."""
    text = data.decode("utf-8", errors="softprompt-hex")
    out = []
    for ch in text:
        if ch == " ":
            out.append(VISIBLE_SPACE)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") or (unicodedata.category(ch) == "Zs" and ch != " "):
            out.append("".join(f"<0x{b:02X}>" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def readable_token(tokenizer, token_id: int) -> str:
    """One token id as a human-readable string for tables and figures.

    Byte-level markers (Ġ, ▁) become a visible space ␣; special tokens are marked, e.g.
    `<|im_end|> [special]`; bytes that are not valid UTF-8 alone show as `<0xNN>`.
    """
    return TokenReader(tokenizer).readable(token_id)


def vocabulary_scripts(tokenizer, n_tokens: int | None = None) -> dict[str, int]:
    """Script counts over the whole vocabulary: the base rate against which neighbour scripts are judged."""
    n = len(tokenizer) if n_tokens is None else n_tokens
    reader = TokenReader(tokenizer)
    return script_counts(d["script"] for d in reader.describe(range(n)))


@torch.no_grad()
def nearest_other_distance(
    rows: torch.Tensor,
    embeddings: torch.Tensor,
    exclude_ids: Sequence[int | None] | None = None,
    *,
    candidates: int = 16,
    chunk_size: int | None = None,
) -> list[float | None]:
    """L2 distance from each row to its nearest vocabulary row other than itself: the "gap" around a token.

    Rows of the vocabulary equal to the row (its own embedding, duplicates of it) and `exclude_ids[i]` (the
    token the row was initialised from) do not count. Candidates are found with one matmul per chunk
    (|p|^2 + |e|^2 - 2 p.e) and their distances recomputed exactly, so near rows do not lose precision.
    None where every candidate was excluded.
    """
    _check(rows, embeddings, "dot")
    p = rows.detach().to(device=embeddings.device, dtype=torch.float32)
    vocab = embeddings.shape[0]
    m = min(candidates, vocab)
    chunk_size = chunk_size or max(4096, (1 << 26) // max(p.shape[0], 1))
    best_d = best_i = None
    for start in range(0, vocab, chunk_size):
        block = embeddings[start : start + chunk_size].float()
        d2 = (p * p).sum(1, keepdim=True) + (block * block).sum(1)[None, :] - 2 * p @ block.T
        d, i = d2.topk(min(m, block.shape[0]), dim=1, largest=False)
        i = i + start
        if best_d is not None:
            d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
            d, pick = d.topk(m, dim=1, largest=False)
            i = i.gather(1, pick)
        best_d, best_i = d, i
    assert best_i is not None
    exact = (embeddings[best_i].float() - p[:, None, :]).norm(dim=2)  # (n, m)
    tol = 1e-6 * p.norm(dim=1).clamp_min(1.0)
    keep = exact > tol[:, None]
    excl = list(exclude_ids or [])
    for r, token in enumerate(excl):
        if token is not None:
            keep[r] &= best_i[r] != int(token)
    exact = torch.where(keep, exact, torch.full_like(exact, float("inf")))
    gap = exact.min(dim=1).values.cpu().tolist()
    return [g if g != float("inf") else None for g in gap]


def _ratio(a: float, b: float | None) -> float | None:
    return None if b is None or b <= _EPS else a / b


def _mean(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _drift_fields(
    prompt: torch.Tensor,
    initial: torch.Tensor,
    init_ids: Sequence[int] | None,
    embeddings: torch.Tensor,
    reader: TokenReader,
    k: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Where each position went: how far (absolute, relative to the init vector, relative to the gap to the
    nearest other token) and in which direction (the tokens nearest by cosine to final - init).

    Also the positions whose top-1 neighbour changed (the final's nearest token is not the initial vector's).
    """
    n = prompt.shape[0]
    delta = prompt - initial
    norms = delta.norm(dim=1).tolist()
    init_norms = initial.norm(dim=1).tolist()
    gaps = nearest_other_distance(initial, embeddings, list(init_ids) if init_ids else None)
    moved = [i for i in range(n) if not torch.equal(prompt[i], initial[i])]
    disp: list[list[dict[str, Any]] | None] = [None] * n
    if moved:
        d_ids, d_sims = nearest_tokens(delta[moved], embeddings, k, "cosine")
        desc = reader.describe(d_ids.flatten().tolist())
        kk = d_ids.shape[1]
        for j, i in enumerate(moved):
            disp[i] = [
                {"id": t, "token": d["token"], "similarity": float(s)}
                for t, s, d in zip(d_ids[j].tolist(), d_sims[j].tolist(), desc[j * kk : (j + 1) * kk], strict=True)
            ]
    top_final = nearest_tokens(prompt, embeddings, 1, "cosine")[0][:, 0].tolist()
    top_init = nearest_tokens(initial, embeddings, 1, "cosine")[0][:, 0].tolist()
    fields = [
        {
            "drift": {
                "norm": norms[i],
                "relative_to_init": _ratio(norms[i], init_norms[i]),
                "relative_to_gap": _ratio(norms[i], gaps[i]),
                "gap": gaps[i],
            },
            "top1_changed": top_final[i] != top_init[i],
            "displacement_tokens": disp[i],
        }
        for i in range(n)
    ]
    counts: dict[str, int] = {}
    for tokens in disp:
        for t in tokens or []:
            counts[t["token"]] = counts.get(t["token"], 0) + 1
    common = sorted(counts, key=lambda w: (-counts[w], list(counts).index(w)))[:10]
    to_gap = [f["drift"]["relative_to_gap"] for f in fields]
    summary = {
        "mean_relative_drift": _mean(f["drift"]["relative_to_init"] for f in fields),
        "mean_relative_to_gap": _mean(to_gap),
        "past_gap_rate": _mean(float(g >= 1.0) for g in to_gap if g is not None),
        "top1_changed_positions": [i for i in range(n) if fields[i]["top1_changed"]],
        "top1_changed_rate": sum(f["top1_changed"] for f in fields) / n,
        "common_displacement_tokens": [{"token": w, "positions": counts[w]} for w in common],
    }
    return fields, summary


# ----------------------------------------------------------------------------- analysis


def _no_drift(n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The drift fields of a prompt without an initial matrix: all None."""
    rows = [{"drift": None, "top1_changed": None, "displacement_tokens": None} for _ in range(n)]
    summary = dict.fromkeys(("mean_relative_drift", "mean_relative_to_gap", "past_gap_rate", "top1_changed_rate"))
    return rows, {**summary, "top1_changed_positions": [], "common_displacement_tokens": []}


def analyze_neighbors(
    prompt: torch.Tensor,
    initial: torch.Tensor | None,
    init_token_ids: Sequence[int] | None,
    embeddings: torch.Tensor,
    tokenizer,
    k: int = 3,
    metric: str = "cosine",
) -> dict[str, Any]:
    """Per position: the top-k tokens with similarities and scripts, the initial token, whether it
    survived (still in the top k), its rank now, and the cosine between the trained and initial vectors.

    The summary holds the survival rate and the surviving words: the study's evidence that some
    words of the English init ("entailed") matter enough for training to keep them.
    Positions without an initial token (random init) get None for the token-based fields.
    With the initial matrix, each position also gets `drift`, `top1_changed` and `displacement_tokens`
    (`_drift_fields`; None without it), and the summary their means and the common displacement tokens.
    """
    prompt = prompt.detach().float().cpu()
    ids, sims = nearest_tokens(prompt, embeddings, k, metric)
    reader = TokenReader(tokenizer)
    init_ids = list(init_token_ids or [])
    have_init = len(init_ids) == prompt.shape[0] and all(0 <= i < embeddings.shape[0] for i in init_ids)
    ranks = token_ranks(prompt, embeddings, init_ids, metric) if have_init else [None] * prompt.shape[0]
    init_desc = reader.describe(init_ids) if have_init else [None] * prompt.shape[0]
    cos0 = l2_0 = None
    if initial is not None:
        initial = initial.detach().float().cpu()
        if initial.shape != prompt.shape:
            raise SoftPromptError(f"initial prompt {tuple(initial.shape)} and prompt {tuple(prompt.shape)} differ in shape")
        cos0 = torch.nn.functional.cosine_similarity(prompt, initial, dim=1).tolist()
        l2_0 = (prompt - initial).norm(dim=1).tolist()
    top_desc = reader.describe(ids.flatten().tolist())
    drift_rows, drift_summary = _no_drift(prompt.shape[0])
    if initial is not None:
        drift_rows, drift_summary = _drift_fields(prompt, initial, init_ids if have_init else None, embeddings, reader, k)
    positions = []
    for i in range(prompt.shape[0]):
        row_ids = ids[i].tolist()
        tokens = [
            {"id": t, "token": d["token"], "similarity": float(s), "script": d["script"]}
            for t, s, d in zip(row_ids, sims[i].tolist(), top_desc[i * ids.shape[1] : (i + 1) * ids.shape[1]], strict=True)
        ]
        pos: dict[str, Any] = {"position": i, "tokens": tokens}
        if have_init:
            pos.update(
                initial_id=init_ids[i],
                initial_token=init_desc[i]["token"],
                initial_rank=ranks[i],
                survived=init_ids[i] in row_ids,
            )
        else:
            pos.update(initial_id=None, initial_token=None, initial_rank=None, survived=None)
        pos["cos_to_initial"] = None if cos0 is None else float(cos0[i])
        pos["l2_to_initial"] = None if l2_0 is None else float(l2_0[i])
        pos.update(drift_rows[i])
        positions.append(pos)
    survived = [p for p in positions if p["survived"]]
    words: list[str] = []
    for p in survived:
        if p["initial_token"] not in words:
            words.append(p["initial_token"])
    summary = {
        "n_tokens": prompt.shape[0],
        "survival_rate": len(survived) / len(positions) if have_init else None,
        "top1_is_initial_rate": (sum(p["tokens"][0]["id"] == p["initial_id"] for p in positions) / len(positions))
        if have_init
        else None,
        "surviving_positions": [p["position"] for p in survived],
        "surviving_words": words,
        "median_initial_rank": float(torch.tensor(ranks, dtype=torch.float).median()) if have_init else None,
        "mean_cos_to_initial": None if cos0 is None else float(sum(cos0) / len(cos0)),
        "mean_top1_similarity": float(sims[:, 0].mean()),
        **drift_summary,
    }
    return {"k": int(ids.shape[1]), "metric": metric, "positions": positions, "summary": summary}


# ----------------------------------------------------------------------------- projection


def project_prompt(prompt: torch.Tensor, embeddings: torch.Tensor, tokenizer, metric: str = "cosine") -> dict[str, Any]:
    """Replace every soft token by its nearest vocabulary token: ids, readable tokens and decoded text.

    `retokenizes_to_same_ids` says whether the text, tokenized again, gives the same ids: when it
    does not, the text and exact projections are different prompts and may score differently.
    """
    ids, sims = nearest_tokens(prompt, embeddings, 1, metric)
    token_ids = ids[:, 0].tolist()
    text = tokenizer.decode(token_ids)
    retok = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {
        "token_ids": token_ids,
        "tokens": [d["token"] for d in TokenReader(tokenizer).describe(token_ids)],
        "similarities": sims[:, 0].tolist(),
        "text": text,
        "retokenizes_to_same_ids": list(retok) == token_ids,
    }


def evaluate_projection(
    evaluator,
    task,
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    metric: str = "cosine",
    *,
    limit: int | None = None,
    no_prompt: bool = True,
) -> dict[str, Any]:
    """Accuracy of the soft prompt next to its projections (Khashabi et al. 2022's waywardness test).

    - `soft`: the trained prompt;
    - `projected_soft`: the embedding rows of the nearest tokens used as a soft prompt (exact projection);
    - `projected_text`: the decoded nearest tokens as a hard prompt (what a reader of the neighbour
      table would type);
    - `no_prompt`: the template alone, for reference.
    A large gap between `soft` and the projections means the neighbour readout does not explain the prompt.
    """
    from softprompt.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    tokenizer = evaluator.backbone.tokenizer
    proj = project_prompt(prompt, embeddings, tokenizer, metric)
    rows = embeddings[torch.tensor(proj["token_ids"], device=embeddings.device)].detach().float().cpu()
    results = {
        "soft": evaluator.evaluate(task, prompt.detach().float(), limit=limit),
        "projected_soft": evaluator.evaluate(task, rows, limit=limit),
        "projected_text": evaluator.evaluate(task, None, hard_prompt=proj["text"], limit=limit),
    }
    if no_prompt:
        results["no_prompt"] = evaluator.evaluate(task, None, limit=limit)
    return {
        "task": task.name,
        "n": results["soft"].n,
        "projection": proj,
        "accuracy": {k: r.accuracy for k, r in results.items()},
        "f1_macro": {k: r.f1_macro for k, r in results.items()},
    }


# ----------------------------------------------------------------------------- report


def neighbors_report(
    backbone,
    runs: Iterable,
    k: int = 3,
    out_dir: str | Path | None = None,
    *,
    metric: str = "cosine",
    which: str = "last",
    project: bool = False,
    evaluator=None,
    task: str | None = None,
    limit: int | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Nearest tokens, survival and scripts for every run (plus projections with `project=True`).

    Writes `neighbors.json` and one `neighbors_<run>.png` per run (the study's top-3 figure) to
    `out_dir` when given; returns the same dict, with figure paths under "figures". Projections are
    evaluated on `task` (default: each run's own task) with `evaluator` (when omitted, one is built on
    `backbone` with the first run's settings, `evaluate.evaluator_for_run`).
    """
    runs = as_runs(runs)
    labels = run_labels(runs)
    tok = backbone.tokenizer
    embeddings = input_embedding_matrix(backbone.model, n_tokens=len(tok))
    if project and evaluator is None:
        from softprompt.evaluate import evaluator_for_run

        evaluator = evaluator_for_run(runs[0], backbone)
    out_dir = Path(out_dir) if out_dir is not None else None
    per_run: dict[str, dict] = {}
    fig_paths: dict[str, str] = {}
    for run, label in zip(runs, labels, strict=True):
        sp = run.prompt(which)
        sp.check_model(embeddings.shape[1], where=f"the prompt of {run.path}")
        analysis = analyze_neighbors(sp.weight, sp.initial, sp.init.token_ids, embeddings, tok, k, metric)
        analysis = {**run_meta(run, label), **analysis}
        trained_on = (run.record.model or {}).get("name") or run.config.get("model")
        if trained_on and trained_on != backbone.name:
            analysis["warning"] = f"prompt trained on {trained_on!r}, read with {backbone.name!r}: neighbours may be meaningless"
        if project:
            analysis["projection"] = evaluate_projection(evaluator, task or run.task, sp.weight, embeddings, metric, limit=limit)
        per_run[label] = analysis
        if figures and out_dir is not None:
            from softprompt.analysis.figures import nearest_token_figure

            fig_paths[label] = str(nearest_token_figure(analysis, out_dir / f"neighbors_{_slug(label)}.png", title=label))
    report = json_safe(
        {
            "model": backbone.name,
            "k": k,
            "metric": metric,
            "which": which,
            "vocabulary_size": int(embeddings.shape[0]),
            "runs": per_run,
            "scripts": summarize_scripts(per_run, vocabulary_scripts(tok, embeddings.shape[0])),
            "summary": _summary(per_run, k),
            "note": "Nearest tokens are a readout, not an explanation (Khashabi et al. 2022): compare the "
            "projected prompts' accuracy with the soft prompt's before reading meaning into them.",
            "figures": fig_paths,
        }
    )
    NeighborsResult.from_json(report, "neighbors report")  # holds everything the study report reads
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(out_dir / "neighbors.json", report)
    return report


def _summary(per_run: dict[str, dict], k: int) -> dict[str, Any]:
    """Headline numbers for reports: survival rate and surviving words per task, projection accuracies per run."""
    by_task: dict[str, list[dict]] = {}
    for a in per_run.values():
        by_task.setdefault(a["task"], []).append(a)
    survival = {}
    for task, analyses in sorted(by_task.items()):
        rates = [a["summary"]["survival_rate"] for a in analyses if a["summary"]["survival_rate"] is not None]
        counts: dict[str, int] = {}
        for a in analyses:
            for w in a["summary"]["surviving_words"]:
                counts[w] = counts.get(w, 0) + 1
        survival[task] = {
            "runs": len(analyses),
            "rate": sum(rates) / len(rates) if rates else None,
            "words": sorted(counts, key=lambda w: (-counts[w], list(counts).index(w))),
            "word_runs": counts,
        }
    projection = [
        {"run": label, "task": a["projection"]["task"], "n": a["projection"]["n"], "text": a["projection"]["projection"]["text"]}
        | a["projection"]["accuracy"]
        for label, a in per_run.items()
        if "projection" in a
    ]
    return {"k": k, "survival_by_task": survival, "projection": projection, "drift_by_task": _drift_by_task(by_task)}


def _drift_by_task(by_task: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Per task, over its runs: mean drift relative to the init and to the gap, the share of positions whose top-1
    neighbour changed, and the displacement tokens shared by most positions."""
    out = {}
    for task, analyses in sorted(by_task.items()):
        sums = [a["summary"] for a in analyses]
        counts: dict[str, int] = {}
        for s in sums:
            for t in s.get("common_displacement_tokens") or []:
                counts[t["token"]] = counts.get(t["token"], 0) + t["positions"]
        out[task] = {
            "runs": len(analyses),
            "mean_relative_drift": _mean(s.get("mean_relative_drift") for s in sums),
            "mean_relative_to_gap": _mean(s.get("mean_relative_to_gap") for s in sums),
            "top1_changed_rate": _mean(s.get("top1_changed_rate") for s in sums),
            "displacement_tokens": sorted(counts, key=lambda w: (-counts[w], list(counts).index(w)))[:10],
        }
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)

"""Interpretation of trained soft prompts: what they read as, how they vary, how they transfer.

- `neighbors`: nearest vocabulary tokens and surviving initial words per run, and the report; its parts:
  `nearest` (the search), `token_text` (readable tokens), `displacement` (drift from the init),
  `projection` (projected prompts, waywardness);
- `scripts`: which writing system each neighbour belongs to;
- `geometry`: drift from the init, distances between seeds, t-SNE/PCA, drift vs task difficulty;
- `importance`: which positions matter (each row replaced by its init or the mean embedding, scored again);
- `describe`: the model says what a prompt asks for, and the report; its parts: `describe_probes` (embed and
  patch probes, identity probe), `patching` (Patchscopes hooks), `describe_scoring` (scores);
- `transfer`: every prompt on every task, prompt similarity, similarity vs transfer gain;
- `figures`: the PNGs;
- `learning`: whether a run learned (its final training loss against the chance loss).

Each `*_report` function returns a JSON-serialisable dict (figure paths under "figures") and,
given an output folder, writes it as JSON next to its figures; `results` holds the typed views of
those dicts that the study report reads (each report checks its own output against its view).
"""

from __future__ import annotations

from softprompt.analysis.common import correlation
from softprompt.analysis.describe import describe_report
from softprompt.analysis.describe_probes import describe_prompt, describe_text
from softprompt.analysis.describe_scoring import description_score
from softprompt.analysis.geometry import drift, embed_2d, geometry_report, pairwise_distances
from softprompt.analysis.importance import importance_report, position_importance
from softprompt.analysis.nearest import nearest_tokens
from softprompt.analysis.neighbors import analyze_neighbors, neighbors_report
from softprompt.analysis.projection import evaluate_projection, project_prompt
from softprompt.analysis.scripts import token_script
from softprompt.analysis.token_text import readable_token
from softprompt.analysis.transfer import prompt_similarity, transfer_matrix, transfer_report
from softprompt.model.prompt import input_embedding_matrix

__all__ = [
    "analyze_neighbors",
    "correlation",
    "describe_prompt",
    "describe_report",
    "describe_text",
    "description_score",
    "drift",
    "embed_2d",
    "evaluate_projection",
    "geometry_report",
    "importance_report",
    "input_embedding_matrix",
    "nearest_tokens",
    "neighbors_report",
    "pairwise_distances",
    "position_importance",
    "project_prompt",
    "prompt_similarity",
    "readable_token",
    "token_script",
    "transfer_matrix",
    "transfer_report",
]

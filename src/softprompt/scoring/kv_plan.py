"""The prefix tree's plan for one batch, from token ids alone: units sharing a prefix, and length groups.

Pure bookkeeping (no forwards): which rows of an example share a prefix (stage 2 computes it once), where
each target falls, and how units are grouped by length so little padding is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from softprompt.data.batching import Batch


def plan_groups(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """Partition indices into groups of similar length minimising sum(overhead + size * max length).

    Exact dynamic programme over the length-sorted order (contiguous groups are optimal there).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = lengths[order[i - 1]]
        for j in range(i):
            c = best[j] + overhead + (i - j) * longest
            if c < best[i]:
                best[i], cut[i] = c, j
    groups = []
    i = n
    while i > 0:
        groups.append(order[cut[i] : i])
        i = cut[i]
    return groups[::-1]


def longest_common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


@dataclass
class TreePlan:
    """A batch as the tree computes it: stage-2 units (an example's rows sharing a prefix, or one row) and targets."""

    rows: list[list[int]]  # each row's real token ids
    lengths: list[int]
    unit_rows: list[list[int]]  # the rows of each unit
    unit_len: list[int]  # the length of each unit's shared prefix
    row_unit: dict[int, int]
    row_plen: dict[int, int]  # the shared-prefix length of each row's unit
    unit_targets: dict[int, list[int]]  # target indices of each unit
    t_row: list[int]
    t_pos: list[int]

    def after(self, c: int) -> TreePlan:
        """The same tree without its first `c` tokens (they are in the cached prefix)."""
        if not c:
            return self
        return TreePlan(
            [r[c:] for r in self.rows],
            [n - c for n in self.lengths],
            self.unit_rows,
            [n - c for n in self.unit_len],
            self.row_unit,
            {r: n - c for r, n in self.row_plen.items()},
            self.unit_targets,
            self.t_row,
            [p - c for p in self.t_pos],
        )


def plan_tree(batch: Batch, lengths: list[int], share_prefix: bool) -> TreePlan | None:
    ids_all = batch.input_ids
    rows = [ids_all[r, : lengths[r]].tolist() for r in range(len(lengths))]
    if share_prefix:
        unit_rows: list[list[int]] = [[] for _ in range(batch.num_examples)]
        for r, e in enumerate(batch.row_example.tolist()):
            unit_rows[e].append(r)
        unit_rows = [u for u in unit_rows if u]
    else:
        unit_rows = [[r] for r in range(len(rows))]
    unit_len = [len(rows[u[0]]) if len(u) == 1 else longest_common_prefix([rows[r] for r in u]) for u in unit_rows]
    if min(unit_len) < 1:
        return None
    row_unit, row_plen = {}, {}
    for ui, u in enumerate(unit_rows):
        for r in u:
            row_unit[r], row_plen[r] = ui, unit_len[ui]
    t_row, t_pos = batch.target_row.tolist(), batch.target_pos.tolist()
    unit_targets: dict[int, list[int]] = {}
    for k, r in enumerate(t_row):
        unit_targets.setdefault(row_unit[r], []).append(k)
    return TreePlan(rows, lengths, unit_rows, unit_len, row_unit, row_plen, unit_targets, t_row, t_pos)

"""TA-DistMult (Garcia-Duran et al. 2018): score = <e_s, r_t, e_o>, r_t = LSTM(relation, date tokens).

Date tokens: point data reads year digits, month and day digits of the day ("2014-05-13" ->
2y 0y 1y 4y 05m 1d 3d). Interval data reads a modifier (``since`` for the start, ``until`` for
the end) and the four digits of the time bucket's first year (clipped at 0 for BCE; the first
bucket is the only one that starts before year 0); the ``unknown`` time id reads one ``unk``
token padded. The two ends of an interval give two r_t whose mean is used (the interval rule of
distkg.models.base).

Token order (our choice; the paper puts the relation first): date tokens first, relation last.
The LSTM state after the date is then computed once per distinct time in a batch and shared by
all relations, and each distinct (relation, time) costs one more LSTM step instead of a whole
sequence: 3-8x less LSTM work, which otherwise costs more than scoring all entities. The last
hidden state still reads every token.
"""

from __future__ import annotations

import torch
from torch import nn

from distkg.data import TKGDataset
from distkg.models.base import DISTMULT, DotProductModel, embedding
from distkg.models.registry import MODELS

YEAR, MONTH, DAY = 0, 10, 22  # offsets of the digit/month/day token groups after the relations
PAD, UNK, SINCE, UNTIL = 32, 33, 34, 35
N_SPECIAL = 36


def time_tokens(dataset: TKGDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, L] token ids of each time id for the start and for the end (equal for point data)."""
    if dataset.time_kind == "point":
        rows = []
        for y, m, d in dataset.time_ymd:
            ys = f"{y:04d}"
            rows.append([YEAR + int(c) for c in ys] + [MONTH + m - 1, DAY + d // 10, DAY + d % 10])
        tok = torch.tensor(rows, dtype=torch.long)
        return tok, tok
    starts, ends = [], []
    for i in range(dataset.num_times):
        if i == dataset.unknown_time:
            digits = [UNK, PAD, PAD, PAD]
        else:
            digits = [YEAR + int(c) for c in f"{max(dataset.buckets[i][0], 0):04d}"]
        starts.append([SINCE] + digits)
        ends.append([UNTIL] + digits)
    return torch.tensor(starts), torch.tensor(ends)


@MODELS.register("tadistmult")
class TADistMult(DotProductModel):
    form = DISTMULT  # <e_s * r_t, e_o>; the LLM teacher's r_t is E(r') * E(t) (distkg.llm.teacher)

    def __init__(self, dataset: TKGDataset, dim: int = 400, init_std: float = 1e-2, reg: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__(dataset, dim)
        self.ent = embedding(self.num_entities, dim, init_std)
        nrel = 2 * self.num_relations
        self.tokens = embedding(nrel + N_SPECIAL, dim, 0.1)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        start, end = time_tokens(dataset)
        self.register_buffer("start_tokens", start + nrel, persistent=False)
        self.register_buffer("end_tokens", end + nrel, persistent=False)
        self.point_time = dataset.time_kind == "point"  # start and end tokens are the same rows
        self.reg = reg
        self.drop = nn.Dropout(dropout)

    def relation_time(self, rel: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        """r_t for each query: the date prefix once per distinct time, then one step per (relation, time)."""
        if self.point_time:  # t0 == t1 and the token rows are equal: one r_t per query suffices
            return self._relation_time(rel, t0, self.start_tokens)
        if torch.compiler.is_exporting():  # each end on its own: no batch-sized split the tracer would fix
            return 0.5 * (self._relation_time(rel, t0, self.start_tokens) + self._relation_time(rel, t1, self.end_tokens))
        nt = self.start_tokens.shape[0]
        # time "slots": start times are 0..T-1, end times T..2T-1 (since/until rows differ)
        rt = self._relation_time(rel.repeat(2), torch.cat([t0, t1 + nt]), torch.cat([self.start_tokens, self.end_tokens]))
        return 0.5 * (rt[: len(rel)] + rt[len(rel):])

    def _relation_time(self, rel: torch.Tensor, slots: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # one LSTM pass per query: the same r_t, without unique's data-dependent shapes
            _, (h_rt, _) = self.lstm(self.tokens(torch.cat([table[slots], rel.unsqueeze(1)], 1)))
            return h_rt[-1]
        uniq_slots, slot_inv = torch.unique(slots, return_inverse=True)
        _, (h, c) = self.lstm(self.tokens(table[uniq_slots]))
        # distinct (relation, slot) pairs as one integer key each, in the same lexicographic order: a 1-d
        # unique is a sort, unique(dim=0) compares rows one by one (about 12 ms a 1,000-query batch)
        n = len(uniq_slots)
        uniq_keys, pair_inv = torch.unique(rel * n + slot_inv, return_inverse=True)
        uniq_rel, uniq_slot = uniq_keys.div(n, rounding_mode="floor"), uniq_keys % n
        state = (h[:, uniq_slot].contiguous(), c[:, uniq_slot].contiguous())
        _, (h_rt, _) = self.lstm(self.tokens(uniq_rel.unsqueeze(1)), state)
        return h_rt[-1][pair_inv]

    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        rt = self.relation_time(queries[:, 1], queries[:, 2], queries[:, 3])
        self._last_rt = (queries, rt)  # the regulariser of the same batch reuses it (no second LSTM pass)
        return self.drop(self.form.join(self.ent(queries[:, 0]), rt))

    def regularizer(self, queries: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """N3 (Lacroix et al. 2018) on the three factors of each scored triple."""
        if not self.reg:
            return super().regularizer(queries, answers)
        last = getattr(self, "_last_rt", None)
        rt = last[1] if last is not None and last[0] is queries else self.relation_time(queries[:, 1], queries[:, 2], queries[:, 3])
        factors = [self.ent(queries[:, 0]), rt, self.ent(answers)]
        return self.reg * sum(f.abs().pow(3).sum() for f in factors) / len(queries)

"""TTransE (Leblay & Chekol 2018): score = -||e_s + r + tau_t - e_o||_2."""

from __future__ import annotations

import torch

from distkg import kernels
from distkg.data import TKGDataset
from distkg.models.base import ScoringForm, TKGModel, embedding
from distkg.models.registry import MODELS


EPS = 1e-9  # squared distances are clamped here so the sqrt has a finite gradient at 0


@torch.library.custom_op("distkg::neg_l2", mutates_args=())
def neg_l2(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """-||q_i - c_j|| for all pairs, [B, D] x [C, D] -> [B, C], clamped at sqrt(EPS): an operator of its
    own (torch.library), its gradient written out, so torch.compile and torch.onnx.export see one node.

    ||q||^2 - 2 q.c + ||c||^2 is one matmul of augmented rows ([-2q, ||q||^2, 1] x [c, 1, ||c||^2]),
    then clamp, sqrt and negation in place: one [B, C] buffer forward, where autograd's form made six
    temporaries forward and seven backward (on float32 CPU tensors the clamp/sqrt/negation and the
    backward's g / s with its clamp check are each one compiled pass, distkg.kernels).
    """
    ones_q, ones_c = q.new_ones(len(q), 1), c.new_ones(len(c), 1)
    qa = torch.cat([-2 * q, q.pow(2).sum(1, keepdim=True), ones_q], 1)
    ca = torch.cat([c, ones_c, c.pow(2).sum(1, keepdim=True)], 1)
    s = qa @ ca.T
    lib = kernels.usable("TTransE's distance", s)
    return kernels.neg_sqrt_(lib, s, EPS) if lib else s.clamp_min_(EPS).sqrt_().neg_()


@neg_l2.register_fake
def _(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return q.new_empty((q.shape[0], c.shape[0]))


def _keep(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs, output)


def _neg_l2_backward(ctx, g: torch.Tensor):
    """With w = g / s (zero where the clamp held), dq = q * rowsum(w) - w @ c and dc = c * colsum(w) - w.T @ q,
    the sums riding along in the two matmuls as a column of ones."""
    q, c, s = ctx.saved_tensors
    g = g.to(s.dtype).contiguous()
    lib = kernels.usable("TTransE's distance", g, s)
    if lib:
        w = kernels.negl2_weights(lib, g, s, EPS)  # one pass
    else:
        # s where the clamp held: no gradient there, as autograd's (no data-dependent branch: traceable)
        w = (g / s).masked_fill_(s >= -EPS ** 0.5, 0)
    w = w.to(q.dtype)  # a bf16 distance (autocast) against float32 weights
    d = q.shape[1]
    dq = dc = None
    if ctx.needs_input_grad[0]:
        wc = w @ torch.cat([c, c.new_ones(len(c), 1)], 1)
        dq = q * wc[:, d:] - wc[:, :d]
    if ctx.needs_input_grad[1]:
        wq = w.T @ torch.cat([q, q.new_ones(len(q), 1)], 1)
        dc = c * wq[:, d:] - wq[:, :d]
    return dq, dc


neg_l2.register_autograd(_neg_l2_backward, setup_context=_keep)


def neg_l2_reference(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The same through autograd's elementwise ops: what neg_l2 is tested against."""
    sq = q.pow(2).sum(1, keepdim=True) - 2 * q @ c.T + c.pow(2).sum(1)
    return -sq.clamp_min(EPS).sqrt()


class TransEForm(ScoringForm):
    """Translational (TTransE): the query joins by addition, candidates match by negative L2 distance."""

    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return neg_l2(q, candidates)


@MODELS.register("ttranse")
class TTransE(TKGModel):
    form = TransEForm()

    def __init__(self, dataset: TKGDataset, dim: int = 400, init_std: float = 0.05, reg: float = 0.0) -> None:
        super().__init__(dataset, dim)
        self.ent = embedding(self.num_entities, dim, init_std)
        self.rel = embedding(2 * self.num_relations, dim, init_std)
        self.time = embedding(self.num_times, dim, init_std)
        self.reg = reg

    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        tau = 0.5 * (self.time(queries[:, 2]) + self.time(queries[:, 3]))
        return self.form.query(self.ent(queries[:, 0]), self.rel(queries[:, 1]), tau)

    def candidate_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.ent.weight[start:stop]

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.form.match(q, candidates)

    def regularizer(self, queries: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """L2 on the embeddings used by the batch (translational models drift in norm without it)."""
        if not self.reg:
            return super().regularizer(queries, answers)
        used = [self.ent(queries[:, 0]), self.ent(answers), self.rel(queries[:, 1]), self.time(queries[:, 2])]
        return self.reg * sum(u.pow(2).sum() for u in used) / len(queries)

"""Generic model tests (pykeen style): every backbone subclasses ModelCase and must pass all of it."""

from __future__ import annotations

import pytest
import torch

from distkg.models import MODELS, TKGModel
from tests.helpers import tiny_dataset


def queries_of(ds, split="train"):
    f = ds.splits[split]
    return torch.from_numpy(f[:, [0, 1, 3, 4]].copy()), torch.from_numpy(f[:, 2].copy())


class ModelCase:
    name: str
    args: dict = {}

    @pytest.fixture(params=["point", "interval"])
    def ds(self, request):
        return tiny_dataset(request.param)

    def make(self, ds, dim=8, seed=0) -> TKGModel:
        torch.manual_seed(seed)
        return MODELS.create(self.name, {"dim": dim, **self.args}, "model.args", dataset=ds)

    def test_scores_cover_all_entities(self, ds):
        m = self.make(ds)
        q, _ = queries_of(ds)
        assert m(q).shape == (len(q), ds.num_entities)
        assert torch.isfinite(m(q)).all()

    def test_chunked_candidates_equal_full(self, ds):
        m = self.make(ds)
        q, _ = queries_of(ds)
        full = m(q)
        parts = torch.cat([m.score_candidates(q, a, min(a + 7, ds.num_entities)) for a in range(0, ds.num_entities, 7)], 1)
        torch.testing.assert_close(parts, full, rtol=1e-5, atol=1e-5)

    def test_reciprocal_relations_are_distinct(self, ds):
        m = self.make(ds)
        q, _ = queries_of(ds)
        rq = q.clone()
        rq[:, 1] += ds.num_relations
        assert not torch.allclose(m(q), m(rq))

    def test_time_matters(self, ds):
        m = self.make(ds)
        q, _ = queries_of(ds)
        later = q.clone()
        later[:, 2:] = (q[:, 2:] + 1) % (ds.num_times - 1)
        assert not torch.allclose(m(q), m(later))

    def test_one_step_reduces_loss_and_regulariser_is_finite(self, ds):
        m = self.make(ds)
        q, a = queries_of(ds)
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        losses = []
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(m(q), a) + m.regularizer(q, a)
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]

    def test_any_dimension_and_seeded(self, ds):
        q, _ = queries_of(ds)
        for dim in (2, 26):
            a, b = self.make(ds, dim, seed=3), self.make(ds, dim, seed=3)
            assert a.dim == dim
            torch.testing.assert_close(a(q), b(q))
        assert self.make(ds, 4).entity_embeddings(torch.tensor([0, 1])).shape[0] == 2


class TestTTransE(ModelCase):
    name = "ttranse"

    def test_score_is_negative_distance(self):
        ds = tiny_dataset("point")
        m = self.make(ds)
        q, a = queries_of(ds)
        e = m.ent.weight
        want = -(e[q[:, 0]] + m.rel.weight[q[:, 1]] + m.time.weight[q[:, 2]] - e[a]).norm(dim=1)
        torch.testing.assert_close(m(q).gather(1, a[:, None])[:, 0], want, rtol=1e-4, atol=1e-4)


class TestTADistMult(ModelCase):
    name = "tadistmult"

    def test_lstm_runs_once_per_distinct_time_and_relation_time(self, ds):
        m = self.make(ds)
        q, _ = queries_of(ds)
        seen = []
        m.lstm.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape[:2])))
        m(q)
        # start and end are distinct inputs (since/until) for intervals; for point data they are one
        slots = {("s", int(t)) for t in q[:, 2]}
        pairs = {(int(r), "s", int(t)) for r, t in zip(q[:, 1], q[:, 2])}
        if ds.time_kind == "interval":
            slots |= {("e", int(t)) for t in q[:, 3]}
            pairs |= {(int(r), "e", int(t)) for r, t in zip(q[:, 1], q[:, 3])}
        date_len = m.start_tokens.shape[1]
        assert seen == [(len(slots), date_len), (len(pairs), 1)]
        assert len(pairs) < 2 * len(q)

    def test_relation_token_is_read_last(self):
        ds = tiny_dataset("point")
        m = self.make(ds)
        q, _ = queries_of(ds)
        rt = m.relation_time(q[:, 1], q[:, 2], q[:, 3])
        seq = torch.cat([m.start_tokens[q[:, 2]], q[:, 1:2]], 1)
        _, (h, _) = m.lstm(m.tokens(seq))
        torch.testing.assert_close(rt, h[-1], rtol=1e-5, atol=1e-6)

    def test_date_tokens(self):
        from distkg.models.tadistmult import DAY, MONTH, YEAR, time_tokens

        ds = tiny_dataset("point")
        start, end = time_tokens(ds)
        assert start[4].tolist() == [YEAR + 2, YEAR + 0, YEAR + 1, YEAR + 4, MONTH + 0, DAY + 0, DAY + 5]  # 2014-01-05
        assert torch.equal(start, end)


class TestTNTComplEx(ModelCase):
    name = "tntcomplex"

    def test_score_is_complex_trilinear(self):
        ds = tiny_dataset("point")
        m = self.make(ds)
        q, a = queries_of(ds)
        k = m.dim // 2

        def c(t):
            return torch.complex(t[:, :k], t[:, k:])

        lhs, rhs = c(m.ent.weight[q[:, 0]]), c(m.ent.weight[a])
        rel = c(m.rel.weight[q[:, 1]]) * c(m.time.weight[q[:, 2]]) + c(m.rel_nt.weight[q[:, 1]])
        want = (lhs * rel * rhs.conj()).sum(1).real
        torch.testing.assert_close(m(q).gather(1, a[:, None])[:, 0], want, rtol=1e-4, atol=1e-5)

    def test_odd_dim_rejected(self):
        from distkg.errors import ConfigError

        with pytest.raises(ConfigError, match=r"model\.args: model 'tntcomplex': .*even dim"):
            self.make(tiny_dataset("point"), dim=5)


def test_ttranse_fused_distance_matches_autograd_forms():
    from distkg.models.ttranse import neg_l2, neg_l2_reference

    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(neg_l2, (q, c))
    torch.library.opcheck(neg_l2, (q, c))  # the operator's schema, fake and autograd registrations agree
    w = torch.randn(6, 9, dtype=torch.float64, generator=g)
    for f in (neg_l2, neg_l2_reference):
        (f(q, c) * w).sum().backward()
    ref_q, ref_c = q.grad.clone(), c.grad.clone()
    q.grad = c.grad = None
    (neg_l2_reference(q, c) * w).sum().backward()
    torch.testing.assert_close(2 * q.grad, ref_q)  # fused + reference == 2 x reference
    torch.testing.assert_close(2 * c.grad, ref_c)
    torch.testing.assert_close(neg_l2(q, c), neg_l2_reference(q, c))
    torch.testing.assert_close(neg_l2(q, c), -torch.cdist(q, c))


def test_ttranse_fused_distance_has_no_gradient_where_the_clamp_holds():
    from distkg.models.ttranse import neg_l2, neg_l2_reference

    q = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    c = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)  # q[0] == c[0]: distance 0, clamped
    grads = []
    for f in (neg_l2, neg_l2_reference):
        q.grad = c.grad = None
        f(q, c).sum().backward()
        grads.append((q.grad.clone(), c.grad.clone()))
    assert torch.isfinite(grads[0][0]).all()
    torch.testing.assert_close(grads[0], grads[1])

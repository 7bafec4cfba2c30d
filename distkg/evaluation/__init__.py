"""Link prediction evaluation under one named protocol (docs/PROTOCOL.md): time-aware filtered,
both directions, realistic ties; alternatives switchable. Model-agnostic through ``Scorer``."""

from distkg.evaluation.filters import FILTER_MODES, FilterIndex, FilterMode
from distkg.evaluation.metrics import TIES, Ties, ranking_metrics
from distkg.evaluation.options import SCORE_BUDGET_BYTES, EvalOptions, budget_bytes, eval_options
from distkg.evaluation.queries import QuerySet, build_queries
from distkg.evaluation.ranking import Ranks, default_query_chunk, evaluate, rank
from distkg.evaluation.scorer import DotProductScorer, Scorer
from distkg.evaluation.splits import evaluate_splits

__all__ = [
    "FILTER_MODES",
    "TIES",
    "SCORE_BUDGET_BYTES",
    "DotProductScorer",
    "EvalOptions",
    "FilterIndex",
    "FilterMode",
    "QuerySet",
    "Ranks",
    "Scorer",
    "Ties",
    "budget_bytes",
    "build_queries",
    "default_query_chunk",
    "eval_options",
    "evaluate",
    "evaluate_splits",
    "rank",
    "ranking_metrics",
]

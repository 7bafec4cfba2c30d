"""TKG models, one module each, registered by name (``model.name`` in a config)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distkg.errors import ConfigError
from distkg.models.registry import MODELS
from distkg.models import frequency, tadistmult, tntcomplex, ttranse  # noqa: F401  (registers)
from distkg.models.base import ScoringForm, TKGModel

if TYPE_CHECKING:
    from distkg.config import RunConfig

__all__ = ["MODELS", "ScoringForm", "TKGModel", "check_dim", "check_models", "scoring_form"]


def scoring_form(name: str) -> ScoringForm:
    """The scoring form of backbone ``name`` (``model.name``), for scoring supplied vectors (the LLM
    teacher's E(p)); a ValueError naming the backbones that have one otherwise."""
    form = getattr(MODELS.get(name), "form", None)
    if form is None:
        have = [n for n in MODELS.names() if getattr(MODELS.get(n), "form", None) is not None]
        raise ValueError(f"{name!r} has no scoring form over supplied embeddings; backbones that have one: {', '.join(have)}")
    return form


def check_dim(name: str, dim: object, where: str) -> None:
    """A trainable model's dimension, checked before any data is read: a positive integer and a
    multiple of the model's ``dim_step`` (TNTComplEx: real + imaginary halves)."""
    factory = MODELS.get(name)
    if not (isinstance(factory, type) and issubclass(factory, TKGModel)):
        return
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"{where}: {dim!r} is not a valid dimension (a positive integer)")
    if dim % factory.dim_step:
        raise ConfigError(f"{where}: {name} needs a dim that is a multiple of {factory.dim_step}, got {dim}")


def check_models(cfg: RunConfig) -> None:
    """The model and its arguments (against its signature), its dim and the pipeline's student dim,
    before any data is read: a bad student dim must not wait for the teachers' training. Run on every
    run config the config layer builds (distkg.checks), which does not import the models."""
    MODELS.check(cfg.model.name, cfg.model.args, "model.args")
    if "dim" in cfg.model.args:
        check_dim(cfg.model.name, cfg.model.args["dim"], "model.args.dim")
    if cfg.pipeline.students:
        check_dim(cfg.model.name, cfg.pipeline.student_dim, "pipeline.student_dim")


"""distkg: distilling temporal knowledge graph reasoning into tiny students (arXiv 2601.00202)."""

from distkg.checks import add_run_check

__version__ = "0.1.0"


def _check_models(cfg) -> None:
    """The models' check of a run config (distkg.checks says why it is registered here); the models
    (and torch) are imported when a run config is first built, not at ``import distkg``."""
    from distkg.models import check_models

    check_models(cfg)


def _check_tracking(cfg) -> None:
    """``train.log_with`` names an installed tracker (distkg.training.tracking), before any training."""
    if cfg.train.log_with != "none":
        from distkg.training.tracking import check_tracker

        check_tracker(cfg.train.log_with)


add_run_check(_check_models)
add_run_check(_check_tracking)

"""The configs of the paper's question with a stronger LLM teacher (configs/reproduce/llm-question.yaml):
the methods that add an LLM term to BKD must differ from each other by that term only, or the grid
would compare more than the LLM's guidance."""

from __future__ import annotations

from pathlib import Path

from distkg.config import load_config, read_yaml

ROOT = Path(__file__).resolve().parents[2] / "configs"
LLM_TERMS = {"llm_huber", "llm_supervised"}


def _stages(method: str) -> list[tuple[str, int, dict[str, dict]]]:
    cfg = load_config([ROOT / "train" / "tadistmult-yago11k-25.yaml", ROOT / "distill" / f"{method}.yaml"])
    return [(s.name, s.epochs, dict(s.losses)) for s in cfg.distill.stages]


def test_bkd_plus_one_llm_term_is_ours_ce_without_the_other():
    full = _stages("ours-ce")
    for method, kept in (("bkd-l2", "llm_huber"), ("bkd-l3", "llm_supervised")):
        stages = _stages(method)
        expected = [(n, e, {k: v for k, v in losses.items() if k not in LLM_TERMS or k == kept}) for n, e, losses in full]
        assert stages == expected, method
        assert kept in stages[-1][2]


def test_stage_one_of_the_llm_variants_is_bkd():
    (_, bkd_epochs, bkd_losses), = _stages("bkd")
    for method in ("ours-ce", "bkd-l2", "bkd-l3"):
        stages = _stages(method)
        assert stages[0][2] == bkd_losses, method
        assert sum(e for _, e, _ in stages) == bkd_epochs, method  # the same epoch budget as BKD


def test_the_question_grid_does_not_reuse_cells_of_the_earlier_llm_teachers():
    # the grid configs as written (tests/test_config.py checks that they load as grids)
    question = read_yaml(ROOT / "reproduce" / "llm-question.yaml")
    assert question["methods"] == ["plain", "bkd", "ours", "ours-ce", "bkd-l2", "bkd-l3"]
    for name in ("paper.yaml", "ablation.yaml", "size-sweep.yaml"):
        assert question["llm_run"] != read_yaml(ROOT / "reproduce" / name)["llm_run"], name
    assert question["student_root"] == "{out}/students"  # its own students, not runs/reproduce/students

import warnings

from distkg.experiments.report import draw_bars, figure_row, part_role, tick_label


def test_figure_row_legends_only_labelled_axes_and_keeps_a_callers_own(tmp_path):
    path = tmp_path / "row.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "No artists with labels" on an empty legend
        with figure_row(3, 2.0, 2.0, path) as (labelled, empty, own):
            labelled.plot([0, 1], [0, 1], label="bkd")
            own.plot([0, 1], [1, 0], label="ours")
            own.legend(fontsize=11)
    assert path.stat().st_size > 0
    assert [t.get_text() for t in labelled.get_legend().get_texts()] == ["bkd"]
    assert empty.get_legend() is None
    assert own.get_legend().get_texts()[0].get_fontsize() == 11


def test_bars_tell_teachers_from_students_and_wrap_long_names(tmp_path):
    names = ["tadistmult 400-d", "smollm2-135m (nf4, head 3 epochs + lora 200 steps)", "plain", "bkd"]
    roles = ["400-d teacher", "LLM teacher", "25-d students", "25-d students"]
    with figure_row(1, 5.0, 3.0, tmp_path / "bars.png") as (ax,):
        draw_bars(ax, names, [0.25, 0.09, 0.06, 0.09], [0, 0, 0.01, 0.01], roles)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["400-d teacher", "LLM teacher", "25-d students"]
    bars = ax.patches
    assert [b.get_hatch() or "" for b in bars] == ["//", "..", "", ""]  # teachers hatched, students plain
    assert len({b.get_facecolor() for b in bars}) == 3
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert max(len(line) for t in ticks for line in t.split("\n")) <= 16 and ticks[2:] == ["plain", "bkd"]
    assert tick_label("/tmp/run/tiny-llama (none, LoRA r=8)") == "tiny-llama\n(none, LoRA r=8)"  # a model folder's name


def test_pipeline_parts_get_their_roles():
    assert [part_role(n) for n in ("teacher: tadistmult 400-d", "LLM teacher: smollm2-135m (nf4, lora 4 steps)",
                                   "student 25-d: bkd", "student 4-d: ours")] == [
        "400-d teacher", "LLM teacher", "25-d students", "4-d students"]

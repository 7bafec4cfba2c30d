import warnings

from distkg.experiments.report import figure_row


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

"""The report reads metrics records and states what they say, including negative results."""
import pytest

from ddo_lib import report


def record(model, value, round_, precision=0.8, recall=0.9):
    return dict(model=model, value=value, round=round_, metric="fd_digits", precision=precision, recall=recall,
                compute_fraction=0.05 * round_, num_images=2000)


def test_prose_states_a_win_and_a_loss_honestly():
    records = [record("reference", 2.0, 0), record("ddo_round1", 1.5, 1, precision=0.9),
               record("ddo_round2", 1.4, 2), record("mle_round1", 1.9, 1)]
    text = report.prose(records)
    assert "-30.0 %" in text and "DDO ends below it" in text and "improve on round 1" in text
    records[-1] = record("mle_round1", 1.0, 1)
    assert "not below" in report.prose(records)


def test_prose_says_when_selection_kept_the_reference():
    records = [record("reference", 2.0, 0), record("ddo_round1", 2.0, 1), record("mle_round1", 1.9, 1)]
    assert "did not improve" in report.prose(records)


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.BEGIN}\nold\n{report.END}\nbottom\n")
    report.update_readme(readme, "new table\n")
    assert readme.read_text() == f"top\n{report.BEGIN}\nnew table\n{report.END}\nbottom\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        report.update_readme(readme, "x")


def test_load_records_orders_models(tmp_path):
    import json

    for name, rnd in [("mle_round1", 1), ("ddo_round2", 2), ("reference", 0), ("ddo_round1", 1)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(record(name, 1.0, rnd)))
    assert [r["model"] for r in report.load_records(tmp_path)] == ["reference", "ddo_round1", "ddo_round2", "mle_round1"]

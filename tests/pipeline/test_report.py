"""The report reads metrics records and states what they say, including negative results."""
import pytest

from ddo_lib.pipeline import records, report


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
    assert [r["model"] for r in records.load_records(tmp_path)] == ["reference", "ddo_round1", "ddo_round2", "mle_round1"]


def test_families_are_reported_separately_and_the_floor_once(tmp_path):
    import json

    for family in ("edm", "var"):
        (tmp_path / family).mkdir()
        rows = [record("reference", 2.0, 0), record("ddo_round1", 1.5 if family == "edm" else 2.5, 1),
                record("mle_round1", 1.9, 1), dict(record("real_held_out_vs_train", 0.5, -1), family="real")]
        for row in rows:
            row.setdefault("family", family)
            (tmp_path / family / f"{row['model']}.json").write_text(json.dumps(row))
    loaded = records.load_records(tmp_path)
    assert [(r["family"], r["model"]) for r in loaded][:3] == [("edm", "reference"), ("edm", "ddo_round1"),
                                                                ("edm", "mle_round1")]
    assert sum(r["model"] == "real_held_out_vs_train" for r in loaded) == 1
    text = report.prose(loaded)
    assert text.index("**EDM.**") < text.index("-25.0 %") < text.index("**VAR.**") < text.index("+25.0 %")
    report.plot_metric_vs_round(loaded, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_plateau_sentence_compares_the_control_with_the_spread():
    reference = dict(record("reference", 2.0, 0), spread_sd=0.1, spread_values=[1.9, 2.0, 2.1])
    assert "is on an MLE plateau" in report.plateau_sentence(reference, record("mle_round2", 1.95, 2))
    assert "is not on an MLE plateau" in report.plateau_sentence(reference, record("mle_round2", 1.7, 2))
    worse = report.plateau_sentence(reference, record("mle_round2", 2.3, 2))
    assert "by +0.300 (3.0 sd), so more MLE training makes the reference worse" in worse
    assert "on an MLE plateau" not in worse
    assert report.plateau_sentence(record("reference", 2.0, 0), record("mle_round2", 1.7, 2)) == ""


def test_stage_durations_read_papermill_metadata(tmp_path):
    import json

    for name, seconds in (("01_data", 30.0), ("03_ddo", 90.0)):
        (tmp_path / f"{name}.ipynb").write_text(json.dumps({"metadata": {"papermill": {"duration": seconds}}}))
    rows = report.stage_durations(sorted(tmp_path.glob("*.ipynb")))
    assert rows == [("01_data", 30.0), ("03_ddo", 90.0)]
    assert "| **total** | **2.0 min** |" in report.durations_markdown(rows)
    (tmp_path / "x.ipynb").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="no papermill duration"):
        report.stage_durations([tmp_path / "x.ipynb"])


def test_plateau_sentence_prefers_the_longer_mle_run():
    reference = dict(record("reference", 2.0, 0), spread_sd=0.1, spread_values=[1.9, 2.0, 2.1])
    records = [reference, record("ddo_round1", 1.5, 1), record("mle_round1", 1.7, 1),
               dict(record("plateau_round1", 1.96, 1), compute_fraction=0.4)]
    text = report.prose(records)
    assert "twice DDO's compute (plateau_round1, 40 % of the pretraining steps)" in text
    assert "changes the metric by -0.040 (0.4 sd), so the reference is on an MLE plateau" in text
    assert "(mle_round1) scores 1.700" in text  # the control is still the equal-compute run


def test_the_floor_line_says_when_it_is_not_at_equal_image_count():
    assert report.floor_label({"num_images": 359}, {"num_images": 2000}) == \
        "held-out real, N = 359\n(models: N = 2000; FD grows as N falls)"
    assert report.floor_label({"num_images": 2000}, {"num_images": 2000}) == "held-out real, N = 2000"


def test_readme_block_holds_the_headline_rows_only(tmp_path):
    import json

    for name, rnd in [("reference", 0), ("ddo_round1", 1), ("ddo_round2", 2), ("mle_round1", 1), ("mle_round2", 2)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(record(name, 2.0 - rnd / 10, rnd), family="edm")))
    block = report.readme_block(records.load_records(tmp_path))
    assert "| ddo_round2 |" in block and "| mle_round2 |" in block
    assert "| ddo_round1 |" not in block and "| mle_round1 |" not in block and "metrics/results.md" in block

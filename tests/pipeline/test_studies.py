"""Seed and variant study aggregation: the claims of the report are computed, not typed."""
import numpy as np
import pytest

from ddo_lib.pipeline import studies


def rec(model, value, round_=1, precision=0.8, recall=0.9):
    return dict(model=model, value=value, round=round_, precision=precision, recall=recall)


def seed_records(ref, ddo, mle, ddo_precision=0.85):
    """The final rounds score `ddo` / `mle`; an earlier MLE round scores lower on the evaluation seeds and
    must be ignored (the evaluation seeds never choose among rounds)."""
    return [rec("reference", ref, 0), rec("ddo_round1", ddo + 0.5), rec("ddo_round2", ddo, 2, ddo_precision),
            rec("mle_round1", mle - 0.1), rec("mle_round2", mle, 2)]


def test_seed_summary_matches_numpy_and_states_the_verdicts():
    per_seed = {0: seed_records(2.0, 1.5, 1.9), 1: seed_records(2.1, 1.6, 1.8), 2: seed_records(1.9, 1.4, 1.95)}
    s = studies.seed_summary(per_seed)
    gaps = np.array([1.5 - 1.9, 1.6 - 1.8, 1.4 - 1.95])
    assert s["gap_mean"] == pytest.approx(gaps.mean())
    assert s["gap_sd"] == pytest.approx(gaps.std(ddof=1))
    assert s["gap_se"] == pytest.approx(gaps.std(ddof=1) / np.sqrt(3))
    changes = np.array([1.5 / 2.0, 1.6 / 2.1, 1.4 / 1.9]) - 1
    assert s["ddo_change_mean"] == pytest.approx(changes.mean())
    assert s["ddo_beats_mle"] and s["ddo_gain_20pct"] and s["precision_up"]
    table = studies.seed_table(s)
    assert "DDO beats" in table and "is met" in table and table.count("\n| ") == 4


def test_a_noisy_or_losing_gap_is_not_a_win():
    per_seed = {0: seed_records(2.0, 1.5, 1.9), 1: seed_records(2.0, 1.9, 1.5)}  # gaps −0.4, +0.4
    s = studies.seed_summary(per_seed)
    assert not s["ddo_beats_mle"] and not s["ddo_gain_20pct"]
    assert "does not beat" in studies.seed_table(s) and "not met" in studies.seed_table(s)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        studies.seed_summary({0: seed_records(2.0, 1.5, 1.9)})
    with pytest.raises(ValueError, match="seed 1: records need both"):
        studies.seed_summary({0: seed_records(2.0, 1.5, 1.9), 1: [rec("reference", 2.0, 0)]})
    with pytest.raises(ValueError, match="no values"):
        studies.mean_sd([])


def test_variant_table_lists_each_variant_against_the_reference():
    table = studies.variant_table(rec("reference", 2.0, 0), {"ns": [rec("ddo_round1", 1.5)],
                                                            "kl": [rec("ddo_round1", 2.2), rec("ddo_round2", 2.1, 2)]})
    assert "| ns | 1 | 1.500 | -25.0 %" in table and "| kl | 2 | 2.100 | +5.0 %" in table
    with pytest.raises(ValueError, match="variant rkl"):
        studies.variant_table(rec("reference", 2.0, 0), {"rkl": []})


def test_update_block_uses_its_own_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{studies.BEGIN}\nold\n{studies.END}\n<!-- results:begin -->\nkeep\n<!-- results:end -->\n")
    studies.update_readme(readme, "new\n")
    assert readme.read_text() == (f"a\n{studies.BEGIN}\nnew\n{studies.END}\n"
                                  "<!-- results:begin -->\nkeep\n<!-- results:end -->\n")


def test_seed_folders_and_plots(tmp_path):
    for name in ("s2", "s1", "notes"):
        (tmp_path / name).mkdir()
    assert list(studies.seed_folders(tmp_path)) == [1, 2]
    with pytest.raises(FileNotFoundError, match="no seed folders"):
        studies.seed_folders(tmp_path / "notes")
    s = studies.seed_summary({0: seed_records(2.0, 1.5, 1.9), 1: seed_records(2.1, 1.6, 1.8)})
    assert studies.plot_seeds(s, tmp_path / "seeds.png").stat().st_size > 1000
    path = studies.plot_variants(rec("reference", 2.0, 0), {"ns": [rec("ddo_round1", 1.5)]}, tmp_path / "v.png")
    assert path.stat().st_size > 1000

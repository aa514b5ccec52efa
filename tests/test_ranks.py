"""The field at a glance (dyncim.report.ranks): ranks, the Friedman test and the Nemenyi critical
difference against values computed by hand on constructed numbers (Demšar 2006)."""
import math

import numpy as np
import pytest

from dyncim.report import ranks as R

# four data sets, four methods; higher is better. Ranks by hand:
#   d1: a 0.9 (1), b 0.8 (2), c 0.7 (3), d 0.6 (4)
#   d2: b 0.85 (1), a 0.80 (2), c 0.75 (3), d 0.70 (4)
#   d3: a 0.7 (1), b 0.6 (2.5), c 0.6 (2.5), d 0.5 (4)   <- a tie shares the mean rank
#   d4: a 0.95 (1), c 0.90 (2), b 0.80 (3), d 0.10 (4)
MEANS = {"d1": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6},
         "d2": {"a": 0.80, "b": 0.85, "c": 0.75, "d": 0.70},
         "d3": {"a": 0.7, "b": 0.6, "c": 0.6, "d": 0.5},
         "d4": {"a": 0.95, "b": 0.80, "c": 0.90, "d": 0.10}}
HAND = {"a": (1 + 2 + 1 + 1) / 4, "b": (2 + 1 + 2.5 + 3) / 4, "c": (3 + 3 + 2.5 + 2) / 4, "d": 4.0}


def test_ranks_per_data_set_with_ties_and_their_means():
    datasets, methods, ranks = R.rank_table(MEANS)
    assert datasets == ["d1", "d2", "d3", "d4"] and methods == ["a", "b", "c", "d"]
    assert ranks[2].tolist() == [1, 2.5, 2.5, 4]
    s = R.summarise(MEANS)
    assert s["methods"] == ["a", "b", "c", "d"]                 # best mean rank first
    assert s["mean_rank"] == pytest.approx([HAND[m] for m in "abcd"])
    assert s["ranks"]["d4"] == {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}


def test_a_method_missing_on_one_data_set_is_left_out():
    means = {**MEANS, "d5": {"a": 0.5, "b": 0.4, "c": 0.3}}   # d ran nowhere else... here not at all
    _, methods, ranks = R.rank_table(means)
    assert methods == ["a", "b", "c"] and ranks.shape == (5, 3)
    assert ranks[0].tolist() == [1, 2, 3]                      # ranked among the three left


def test_friedman_statistic_equals_demsars_formula_without_ties():
    """Without ties scipy's chi2 is Demšar's Eq. (1): 12N/(k(k+1)) [sum R_j^2 - k(k+1)^2/4], and the
    Iman-Davenport F is Eq. (2): (N-1) chi2 / (N(k-1) - chi2)."""
    means = {d: v for d, v in MEANS.items() if d != "d3"}     # d3 has a tie
    _, _, ranks = R.rank_table(means)
    n, k = ranks.shape
    rj = ranks.mean(0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(rj ** 2) - k * (k + 1) ** 2 / 4)
    # by hand: mean ranks a 4/3, b 2, c 8/3, d 4: chi2 = 12*3/20 * (16/9 + 4 + 64/9 + 16 - 25) = 7
    assert chi2 == pytest.approx(7.0)
    fr = R.friedman(ranks)
    assert fr["chi2"] == pytest.approx(7.0)
    assert fr["F"] == pytest.approx(2 * 7.0 / (3 * 3 - 7.0))    # 7.0
    from scipy import stats as S
    assert fr["p"] == pytest.approx(S.chi2.sf(7.0, 3)) and fr["p_F"] == pytest.approx(S.f.sf(7.0, 3, 6))


def test_friedman_needs_three_methods_and_two_data_sets():
    assert R.friedman(np.array([[1.0, 2.0], [2.0, 1.0]]))["p"] is None
    assert "needs 3 methods and 2 data sets (have 3 and 1)" in R.friedman(np.array([[1.0, 2.0, 3.0]]))["note"]
    # every data set ranks alike: chi2 at its maximum N(k-1), the F form infinite (not reported)
    fr = R.friedman(np.array([[1.0, 2.0, 3.0]] * 3))
    assert fr["chi2"] == pytest.approx(6.0) and fr["F"] is None


@pytest.mark.parametrize("k,q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (7, 2.949),
                                 (8, 3.031), (9, 3.102), (10, 3.164)])
def test_q_alpha_is_demsars_table_5(k, q):
    assert R.q_alpha(k) == pytest.approx(q, abs=1.5e-3)


def test_critical_difference_by_hand_and_the_groups_within_it():
    # k = 4, N = 4: CD = 2.569 * sqrt(4 * 5 / 24) = 2.345
    cd = R.critical_difference(4, 4)
    assert cd == pytest.approx(2.569 * math.sqrt(20 / 24), abs=2e-3)
    s = R.summarise(MEANS)
    assert s["cd"] == pytest.approx(cd)
    # mean ranks a 1.25, b 2.125, c 2.625, d 4.0: a..c lie within 2.345 of a; b..d within it of b
    # (4.0 - 2.125 = 1.875); a and d differ by 2.75 > CD: two overlapping groups
    assert s["cliques"] == [["a", "b", "c"], ["b", "c", "d"]]
    assert R.cliques(["x", "y", "z"], np.array([1.0, 2.0, 3.0]), 0.5) == []   # all apart


def test_the_report_section_and_diagram(tmp_path):
    from dyncim.report import figures, markdown as report_md
    s = R.summarise(MEANS)
    png = figures.critical_difference(s, tmp_path / "cd.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(report_md.field_section(s, tmp_path / "REPORT.md", png))
    assert text.startswith("## The field at a glance")
    assert "| a | 1.25 | 1 | 2 | 1 | 1 |" in text and "| b | 2.12 | 2 | 1 | 2.5 | 3 |" in text
    assert f"χ² = {s['friedman']['chi2']:.2f}" in text and "2.35 (the critical difference)" in text
    assert "2 group(s)" in text and "](cd.png)" in text

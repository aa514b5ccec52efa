import math
import statistics

import pytest

from dyncim.report import stats


def test_paired_t_test_gives_the_known_p_value():
    # differences 1, 2, 3: mean 2, sd 1, t = 2·√3 on 2 degrees of freedom; the t(2) distribution
    # has F(t) = 1/2 + t / (2·√(2 + t²)), so p = 1 − t/√(2 + t²) = 1 − √(12/14)
    a = {0: 11.0, 1: 22.0, 2: 33.0}
    b = {0: 10.0, 1: 20.0, 2: 30.0}
    r = stats.paired_test(a, b)
    assert r["mean_diff"] == 2.0 and r["n"] == 3 and r["seeds"] == [0, 1, 2] and not r["common_only"]
    assert r["t"] == pytest.approx(2 * math.sqrt(3), rel=1e-12)
    assert r["p"] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)      # 0.07418...
    assert stats.mark(r) == "" and stats.verdict(r) == "within noise"
    assert "within noise" in stats.describe(r, "x", "y")
    # the same differences reversed: t flips sign, p is two-sided
    r2 = stats.paired_test(b, a)
    assert r2["mean_diff"] == -2.0 and r2["p"] == pytest.approx(r["p"]) and r2["t"] == pytest.approx(-r["t"])
    # differences 1, 1.1, 0.9 over 3 seeds: t = 1 / (0.1/√3) = 17.32, p = 1 − t/√(2+t²) = 0.00332
    r3 = stats.paired_test({0: 1.0, 1: 1.1, 2: 0.9}, {0: 0.0, 1: 0.0, 2: 0.0})
    t = 1 / (0.1 / math.sqrt(3))
    assert r3["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert stats.mark(r3) == "**" and stats.verdict(r3) == "better" and stats.significant(r3)
    assert "significantly higher" in stats.describe(r3, "x", "y")


def test_pairs_on_common_seeds_and_says_so():
    dyncim = {s: 0.8 + 0.01 * s for s in range(5)}
    joint = {0: 0.70, 1: 0.72, 2: 0.69}
    r = stats.paired_test(dyncim, joint)
    assert r["seeds"] == [0, 1, 2] and r["n"] == 3 and r["common_only"]
    assert r["mean_diff"] == pytest.approx(statistics.fmean([0.8 - 0.7, 0.81 - 0.72, 0.82 - 0.69]))
    assert "common seeds only" in stats.describe(r, "dyncim", "joint")
    assert stats.paired_test({0: 1.0}, {1: 1.0}) == {
        "mean_diff": None, "p": None, "t": None, "n": 0, "seeds": [], "common_only": True, "note": "no common seed"}


def test_undefined_tests_are_explicit():
    one = stats.paired_test({0: 0.9, 1: 0.8}, {0: 0.7})
    assert one["n"] == 1 and one["p"] is None and one["mean_diff"] == pytest.approx(0.2) and "one common seed" in one["note"]
    same = stats.paired_test({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert same["p"] is None and same["mean_diff"] == 0 and same["note"] == "identical on every common seed"
    # a constant difference (up to float rounding): no variance, no t-test, said so
    const = stats.paired_test({0: 0.9675, 1: 0.9650, 2: 0.9700}, {0: 0.9650, 1: 0.9625, 2: 0.9675})
    assert const["p"] is None and "no variance" in const["note"] and const["mean_diff"] == pytest.approx(0.0025)
    for r in (one, same, const):
        assert stats.mark(r) == "" and not stats.significant(r) and stats.verdict(r).startswith("no test")


def test_compare_against_the_references():
    values = {"joint": {0: 0.5, 1: 0.6, 2: 0.55}, "dyncim": {0: 0.7, 1: 0.8, 2: 0.72, 3: 0.75},
              "mla": {0: 0.6, 1: 0.61, 2: 0.62}, "unimodal": {}}
    c = stats.compare(values)
    assert set(c) == {"joint", "dyncim"}
    assert set(c["joint"]) == {"dyncim", "mla"} and set(c["dyncim"]) == {"joint", "mla"}   # no empty ones
    assert c["dyncim"]["joint"]["mean_diff"] == pytest.approx(-c["joint"]["dyncim"]["mean_diff"])
    assert stats.compare({"mla": {0: 1.0}}) == {}


def test_summary_and_metrics_of_runs():
    assert stats.summary([0.5, 0.7, None]) == {"mean": 0.6, "std": statistics.stdev([0.5, 0.7]), "n": 2}
    assert stats.summary([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1} and stats.summary([None]) is None
    run = {"acc": 0.9, "modalities": {"x_y": {"own": 0.4, "probe": 0.8}}}
    assert stats.metric(run, "acc") == 0.9 and stats.metric(run, "x_y_own") == 0.4
    assert stats.metric({"modalities": {}}, "acc") is None
    assert stats.per_seed({"m": {0: run, 1: {"modalities": {}}}}, "acc") == {"m": {0: 0.9}}

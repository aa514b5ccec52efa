"""REPORT.md: every number in it is recomputed here from the per-run JSONs (and the robustness
sweep's per-run accuracies), independently of dyncim.report.stats."""
import json
import random
import re
import statistics
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from dyncim import paths
from dyncim.report import markdown as report_md

SEEDS = {"joint": [0, 1, 2], "joint-sum": [0, 1, 2], "unimodal": [0, 1, 2], "mla": [0, 1, 2],
         "dyncim": [0, 1, 2, 3, 4], "dyncim-no-gate": [0, 1, 2], "dyncim-no-sdc": [0, 1, 2], "bss": [0, 1, 2]}
TYPES = {"joint": "joint", "joint-sum": "joint", "unimodal": "unimodal", "mla": "mla", "dyncim": "dyncim",
         "dyncim-no-gate": "dyncim", "dyncim-no-sdc": "dyncim", "bss": "bss"}
DATA = {"d1": ["a", "b"], "d2": ["x", "y", "z"]}
LEVELS = [0.0, 0.5, 1.0, 2.0, 4.0]
NUM = re.compile(r"[+-]?\d+\.\d+")


def params():
    return {"run": {"datasets": list(DATA), "methods": list(SEEDS)},
            "methods": {m: {"type": TYPES[m], "seeds": s} for m, s in SEEDS.items()}}


def fake_outputs(root: Path):
    """Evaluation JSONs as the evaluate step writes them (accuracies multiples of 1/400), with a
    method far above joint (dyncim), one consistently above it (mla), one equal to joint on every
    seed (joint-sum, no test), and
    unimodal without a fused accuracy; a robustness record per data set; figure files."""
    rng = random.Random(0)
    q = lambda v: round(v * 400) / 400
    rob, figs = {}, {}
    for data, names in DATA.items():
        joint = {}
        runs = {}
        for m, seeds in SEEDS.items():
            for s in seeds:
                base = {"joint": 0.80, "dyncim": 0.90}.get(m, 0.82)
                acc = q(base + rng.uniform(-0.02, 0.02))
                if m == "joint":
                    joint[s] = acc
                if m == "joint-sum":
                    acc = joint[s]
                if m == "mla":   # a consistent gain over joint: p < 0.001
                    acc = joint[s] + 0.05 + 0.0025 * (s == 1)
                r = {"data": data, "method": m, "seed": s, "names": names, "best_epoch": 7, "best_val_acc": 0.5,
                     "modalities": {n: {"own": q(rng.uniform(0.2, 0.9)), "probe": q(rng.uniform(0.5, 0.9)),
                                        "probe_val": 0.7, "probe_ridge": 0.01} for n in names}}
                if m != "unimodal":
                    r.update(acc=acc, macro_f1=q(acc - rng.uniform(0, 0.03)))
                if m in ("dyncim", "bss"):   # what each curriculum admitted (saved at training)
                    r["diagnostics"] = {"admitted_first": q(rng.uniform(0.1, 0.6)), "admitted_mean": q(rng.uniform(0.6, 1)),
                                        "admitted_full_epoch": rng.choice([0, 20, 21])}
                p = root / paths.eval_file(data, m, s)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps(r))
                if m != "unimodal":
                    runs.setdefault(m, {})[str(s)] = {"clean": acc, "modalities": {
                        n: {"levels": [acc] + [q(acc - rng.uniform(0, 0.1) * lv) for lv in LEVELS[1:]],
                            "missing": q(rng.uniform(0.1, 0.5))} for n in names}}
        record = {"data": data, "names": names, "levels": LEVELS, "noise_seed": 0, "runs": runs,
                  "skipped": {"unimodal": "trains each modality as a separate model"}, "summary": "not read"}
        rob[data] = root / "results" / "robustness" / f"{data}.json"
        rob[data].parent.mkdir(parents=True, exist_ok=True)
        rob[data].write_text(json.dumps(record))
        figs[data] = {k: root / "results" / "figures" / data / f"{k}.png"
                      for k in ("accuracy", "rebalance", "curves", "dyncim", "robustness")}
        for f in figs[data].values():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"png")
    return rob, figs


# --- the expected cells, computed here ---------------------------------------------------------

def ms(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, "—"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, f"{mean:.3f} ± {std:.3f}"


def delta(a: dict, b: dict) -> str:
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(d)
    dagger = "†" if set(a) != set(b) else ""
    if max(d) - min(d) < 1e-12:
        note = "identical on every common seed" if max(map(abs, d)) < 1e-12 else \
            "the same difference on every common seed: no variance, the t-test is undefined"
        return f"{mean:+.3f} (no test: {note}; n = {len(seeds)}){dagger}"
    p = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    mark = "**" if p < 0.01 else "*" if p < 0.05 else ""
    pt = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    return f"{mean:+.3f}{mark} ({pt}, n = {len(seeds)}){dagger}" + ("" if p < 0.05 else " within noise")


def bold(cells_means):
    shown = [None if m is None else round(m, 3) for m, _ in cells_means]
    best = max(x for x in shown if x is not None)
    return [f"**{c}**" if x == best else c for x, (_, c) in zip(shown, cells_means)]


def tables(section: str) -> list[list[list[str]]]:
    """Markdown tables of a section: rows of cells (header first, the --- line dropped)."""
    out, cur = [], None
    for line in section.splitlines():
        if line.startswith("|"):
            if cur is None:
                cur = []
                out.append(cur)
            if not line.startswith("|---"):
                cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            cur = None
    return out


def check_field(section: str, p: dict, root: Path, seeds: dict) -> set[str]:
    """The first section, recomputed: each data set ranks the methods with a fused accuracy (DynCIM's
    ablations aside) by mean accuracy over seeds, ties sharing their mean rank; the mean ranks; the
    Friedman test and the Nemenyi critical difference from scipy directly. Returns its numbers."""
    from scipy import stats as S
    datasets = p["run"]["datasets"]
    methods = [m for m in p["run"]["methods"] if not (p["methods"][m]["type"] == "dyncim" and m != "dyncim")]
    means = {}
    for d in datasets:
        for m in methods:
            accs = [json.loads((root / paths.eval_file(d, m, s)).read_text()).get("acc") for s in seeds[m]]
            if None not in accs:
                means.setdefault(m, {})[d] = statistics.fmean(accs)
    methods = [m for m in methods if len(means.get(m, {})) == len(datasets)]
    ranks = {d: dict(zip(methods, S.rankdata([-means[m][d] for m in methods]))) for d in datasets}
    mean_rank = {m: statistics.fmean(ranks[d][m] for d in datasets) for m in methods}
    order = sorted(methods, key=lambda m: mean_rank[m])
    (table,) = tables(section)
    assert table[0] == ["method", "mean rank", *datasets]
    want = [[m, f"{mean_rank[m]:.2f}", *(f"{ranks[d][m]:g}" for d in datasets)] for m in order]
    assert table[1:] == want
    k, n = len(methods), len(datasets)
    if k < 3 or n < 2:
        assert f"No Friedman test: it needs 3 methods and 2 data sets (have {k} and {n})." in section
        return set(NUM.findall(" ".join(" ".join(r) for r in table))) | set(NUM.findall(section.split("\n\n", 3)[-1]))
    chi2 = S.friedmanchisquare(*[[ranks[d][m] for d in datasets] for m in methods])[0]
    cd = S.studentized_range.ppf(0.95, k, float("inf")) / 2 ** 0.5 * (k * (k + 1) / (6 * n)) ** 0.5
    assert f"χ² = {chi2:.2f}, {report_md._fmt_p(S.chi2.sf(chi2, k - 1))}" in section
    if n * (k - 1) - chi2 > 1e-12:
        f = (n - 1) * chi2 / (n * (k - 1) - chi2)
        assert f"F = {f:.2f}, {report_md._fmt_p(S.f.sf(f, k - 1, (k - 1) * (n - 1)))}" in section
    else:   # the data sets rank the methods alike: Iman and Davenport's F is infinite
        assert "every data set ranks the methods alike" in section
    assert f"{cd:.2f} (the critical difference)" in section
    nums = set(NUM.findall(" ".join(" ".join(r) for r in table)))
    return nums | set(NUM.findall(section.split("\n\n", 3)[-1]))   # the test's sentence (p, F, counts)


def check_report(text: str, p: dict, root: Path, out: Path, rob: dict, figs: dict) -> dict:
    """Recompute every number of REPORT.md `text` from the evaluation JSONs under `root` and the
    robustness records `rob` ({data: path}) for the run list of job configuration `p`; check the
    figure links `figs` ({data: {kind: path}}). Returns {data: (ranked, ablation, robustness
    tables)} for further checks. Used on constructed numbers here and on a real run in
    tests/test_pipeline.py."""
    methods = p["run"]["methods"]
    seeds = {m: p["methods"][m]["seeds"] for m in methods}
    expected_numbers = set()
    sections = text.split("\n## ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["The field at a glance", *p["run"]["datasets"]]
    expected_numbers |= check_field(sections.pop(0), p, root, seeds)
    found = {}
    for section, data in zip(sections, p["run"]["datasets"]):
        runs = {m: {s: json.loads((root / paths.eval_file(data, m, s)).read_text()) for s in seeds[m]}
                for m in methods}
        names = next(iter(runs[methods[0]].values()))["names"]
        get = lambda r, key: r.get(key) if key in ("acc", "macro_f1") else r["modalities"][key[:-4]]["own"]
        cols = ["acc", "macro_f1"] + [f"{n}_own" for n in names]
        acc = {m: {s: r["acc"] for s, r in rs.items() if "acc" in r} for m, rs in runs.items()}
        refs = [r for r in ("joint", "dyncim") if r in methods]
        ablations = [m for m in methods if p["methods"][m]["type"] == "dyncim"]
        tabs = tables(section)
        ranked, rest = tabs[0], tabs[1:]
        ablation = rest.pop(0) if len(ablations) > 1 else None
        curricula = rest.pop(0) if "dyncim" in methods and "bss" in methods else None
        robust = rest
        # ranked table: by mean accuracy, methods without a fused accuracy (unimodal) last
        order = sorted([m for m in methods if acc[m]], key=lambda m: -statistics.fmean(acc[m].values()))
        order += [m for m in methods if not acc[m]]
        assert ranked[0] == ["rank", "method", "seeds", "accuracy", "macro-F1"] + [f"{n} own head" for n in names] + \
            [f"Δ accuracy vs {r}" for r in refs]
        assert [r[1] for r in ranked[1:]] == order
        columns = [bold([ms([get(r, c) for r in runs[m].values()]) for m in order]) for c in cols]
        for i, (m, row) in enumerate(zip(order, ranked[1:])):
            want = [str(i + 1) if acc[m] else "—", m, str(len(seeds[m]))] + [col[i] for col in columns]
            for ref in refs:
                want.append("(reference)" if m == ref else delta(acc[m], acc[ref]) if acc[m] else "—")
            assert row == want
            expected_numbers.update(NUM.findall(" ".join(want)))
        if ablation is not None:   # dyncim first, then its ablations in run-list order
            assert [r[0] for r in ablation[1:]] == ablations
            columns = [bold([ms([get(r, c) for r in runs[m].values()]) for m in ablations]) for c in cols]
            for i, (m, row) in enumerate(zip(ablations, ablation[1:])):
                want = [m, str(len(seeds[m]))] + [col[i] for col in columns] + \
                       ["(reference)" if m == "dyncim" else delta(acc[m], acc["dyncim"])]
                assert row == want
                expected_numbers.update(NUM.findall(" ".join(want)))
        if curricula is not None:   # dyncim, then the BSS instances: score, paired Δ, what each admitted
            rel = ["dyncim"] + [m for m in methods if p["methods"][m]["type"] == "bss"]
            assert curricula[0] == ["method", "seeds", "accuracy", "Δ accuracy vs dyncim", "admitted, first epoch",
                                    "admitted, mean over training", "all admitted from epoch (per seed)"]
            assert [r[0] for r in curricula[1:]] == rel
            for m, row in zip(rel, curricula[1:]):
                diag = lambda k: [r["diagnostics"][k] for r in runs[m].values()]
                want = [m, str(len(seeds[m])), ms(acc[m].values())[1],
                        "(reference)" if m == "dyncim" else delta(acc[m], acc["dyncim"]),
                        ms(diag("admitted_first"))[1], ms(diag("admitted_mean"))[1],
                        ", ".join("never" if e == 0 else str(e) for e in diag("admitted_full_epoch"))]
                assert row == want
                expected_numbers.update(NUM.findall(" ".join(want)))
                if m != "dyncim":   # the sentence under the table: the same difference and its p-value
                    common = sorted(set(acc[m]) & set(acc["dyncim"]))
                    pv = float(ttest_rel([acc[m][k] for k in common], [acc["dyncim"][k] for k in common]).pvalue)
                    assert f"{m} vs dyncim: {statistics.fmean(acc[m][k] - acc['dyncim'][k] for k in common):+.3f} " \
                           f"accuracy (p = {pv:.3g}" in section
                    expected_numbers.add(f"{pv:.3g}")
        else:
            assert "two curricula" not in section
        # robustness: one table per modality, rows in the ranked order, from the per-run accuracies
        if data in rob:
            record = json.loads(Path(rob[data]).read_text())
            levels = record["levels"]
            assert len(robust) == len(names)
            swept = [m for m in order if m in record["runs"]]
            for name, table in zip(names, robust):
                assert table[0] == ["method", "seeds", "σ = 0 (clean)"] + [f"σ = {lv:g}" for lv in levels[1:]] + ["missing"]
                expected_numbers.update(NUM.findall(" ".join(table[0])))   # the levels
                assert [r[0] for r in table[1:]] == swept
                columns = []
                for k in range(len(levels) + 1):
                    vals = lambda m: [r["modalities"][name]["levels"][k] if k < len(levels) else r["modalities"][name]["missing"]
                                      for r in record["runs"][m].values()]
                    columns.append(bold([ms(vals(m)) for m in swept]))
                for i, (m, row) in enumerate(zip(swept, table[1:])):
                    want = [m, str(len(record["runs"][m]))] + [c[i] for c in columns]
                    assert row == want
                    expected_numbers.update(NUM.findall(" ".join(want)))
                # level 0 is the clean accuracy: the same numbers as the ranked table's accuracy column
                clean = {r[1]: r[3].strip("*") for r in ranked[1:]}
                assert all(row[2].strip("*") == clean[row[0]] for row in table[1:])
        else:
            assert not robust
        # the figures, linked relative to the report
        for kind, f in figs.get(data, {}).items():
            link = f"(figures/{data}/{kind}.png)"
            assert link in section and (out.parent / link[1:-1]).resolve() == Path(f).resolve()
        found[data] = (ranked, ablation, robust)
    # no number in the report that was not recomputed here (bar the stated thresholds)
    stray = set(NUM.findall(text)) - expected_numbers - {"0.05", "0.01"}
    assert not stray, stray
    return found


def test_every_number_of_the_report_is_recomputed_from_the_run_jsons(tmp_path):
    rob, figs = fake_outputs(tmp_path)
    out = tmp_path / "results" / "REPORT.md"
    text = report_md.write(params(), out, root=tmp_path, robustness=rob, figures=figs)
    assert out.read_text() == text
    found = check_report(text, params(), tmp_path, out, rob, figs)
    for data, (ranked, ablation, robust) in found.items():
        assert len(robust) == len(DATA[data]) and ablation is not None
        assert ranked[1][1] == "dyncim" and ranked[1][3].startswith("**")
        row = dict(zip(ranked[0], next(r for r in ranked if r[1] == "joint-sum")))
        assert row["Δ accuracy vs joint"].startswith("+0.000 (no test: identical")
        row = dict(zip(ranked[0], next(r for r in ranked if r[1] == "joint")))
        assert "†" in row["Δ accuracy vs dyncim"]   # dyncim ran 5 seeds, joint 3: paired on 3
    assert "Not in the sweep: unimodal" in text
    for said in ("within noise", "p < 0.001", "** (p = 0.00", "(no test: identical", ")†"):
        assert said in text, said


def test_seed_lists_are_stated(tmp_path):
    p = params()
    sentence = report_md._seed_sentence(p, list(SEEDS))
    assert "dyncim: seeds 0, 1, 2, 3, 4 (n = 5)" in sentence and "the other 7 methods: seeds 0, 1, 2 (n = 3)" in sentence
    assert "common seeds only" in sentence
    p1 = {"methods": {"a": {"seeds": [0, 1]}, "b": {"seeds": [0, 1]}}}
    assert report_md._seed_sentence(p1, ["a", "b"]) == "Every method ran seeds 0, 1 (n = 2)."


def test_report_without_robustness_or_figures(tmp_path):
    fake_outputs(tmp_path)
    text = report_md.build(params(), tmp_path / "R.md", root=tmp_path)
    assert "robustness" not in text and "![" not in text and "### d2: DynCIM ablations" in text
    (tmp_path / paths.eval_file("d1", "mla", 2)).unlink()
    with pytest.raises(FileNotFoundError, match="seed2.json: missing"):
        report_md.build(params(), tmp_path / "R.md", root=tmp_path)


def test_dvc_metrics_are_the_headline_figures_and_replace_the_folder_whole(tmp_path, monkeypatch):
    from dyncim.report import summary as report
    fake_outputs(tmp_path)
    out = tmp_path / "results" / "metrics"
    out.mkdir(parents=True)
    (out / "ghost.json").write_text("{}")   # a method no longer in the run list
    report.write(params(), tmp_path)
    files = {f.name for f in out.iterdir()}
    assert files == {f"{m}.json" for m in SEEDS if m != "unimodal"} | {f"{report.MARGIN}.json"}
    for data in DATA:
        acc = {m: {s: json.loads((tmp_path / paths.eval_file(data, m, s)).read_text()).get("acc") for s in seeds}
               for m, seeds in SEEDS.items()}
        for m in SEEDS:
            if m != "unimodal":
                assert json.loads((out / f"{m}.json").read_text())[data] == round(statistics.fmean(acc[m].values()), 4)
        # the margin: paired over the seeds both ran (joint's 3), not the difference of the 5- and 3-seed means
        margin = statistics.fmean(acc["dyncim"][s] - acc["joint"][s] for s in SEEDS["joint"])
        assert json.loads((out / f"{report.MARGIN}.json").read_text())[data] == round(margin, 4)
    # a failure while writing leaves the previous folder as it was
    before = {f.name: f.read_text() for f in out.iterdir()}
    import dyncim.atomic as atomic

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.json, "dumps", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_json_dir(out, {"joint": {"d1": 0.5}})
    assert {f.name: f.read_text() for f in out.iterdir()} == before
    assert not list(out.parent.glob(".metrics.*"))

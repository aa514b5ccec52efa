"""Load, validate and resolve params.yaml: the one loader shared by the CLI, Snakemake and tests.

Deliberately torch-free, so the Snakefile can import it without paying torch's start-up.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .data import catalog as data_catalog
from .methods.catalog import CATALOG

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml is not valid; the message names the key and what is allowed."""


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    """The schema file, with what the data catalog (dyncim.data.catalog) says filled in: the
    source names, each source's rules for its data configurations, the split names."""
    with open(SCHEMA_PATH) as f:
        schema = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))   # libyaml where built
    dataset = schema["$defs"]["dataset"]
    source = dataset["properties"]["source"]
    source["enum"] = list(data_catalog.CATALOG)
    source["description"] = source.get("description", "").strip() + " " + "; ".join(
        f"{n}: {e.about}" for n, e in data_catalog.CATALOG.items())
    dataset["allOf"] = dataset.get("allOf", []) + data_catalog.dataset_rules()
    schema["$defs"]["media"]["properties"]["split"]["enum"] = data_catalog.split_choices()
    return schema


def load_schema() -> dict:
    """The params schema, parsed once per process (evaluation completes every checkpoint's method
    configuration from it); a copy, so that callers may change theirs."""
    return copy.deepcopy(_schema())


# Training defaults: the schema's `$defs/train` defaults (the one place they are written).
# params.yaml's `train` overrides them, then the data set, the method and the data set's
# per-method entry, in that order.
TRAIN_DEFAULTS: dict[str, Any] = {k: v["default"] for k, v in load_schema()["$defs"]["train"]["properties"].items()}


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError, prefix=()) -> str:
    key = _key(list(prefix) + list(error.absolute_path))
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if allowed:
            return f"{key}: unknown key(s) {extra}; allowed: {allowed}"
        return f"{key}: unknown key(s) {extra}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; expected one of {error.validator_value}"
    if error.validator == "type":
        return f"{key}: {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "not" and isinstance(error.instance, dict):
        rule = error.validator_value   # the catalog's rules: {anyOf: [{required: [k]}...]} or {required: [...]}
        if list(rule) == ["anyOf"] and all(list(r) == ["required"] for r in rule["anyOf"]):
            present = [k for r in rule["anyOf"] for k in r["required"] if k in error.instance]
            return f"{key}: {present} not allowed for this source (dyncim.data.catalog says which keys it reads)"
        if list(rule) == ["required"]:
            return f"{key}: {rule['required']} not allowed together; give one of them"
    return f"{key}: {error.message}"


def _validate(instance, schema, root, source: str, prefix=()) -> None:
    validator = jsonschema.Draft202012Validator(
        schema, registry=_registry(root))
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_describe(e, prefix) for e in errors)
        raise ParamsError(f"{source}: invalid parameters:\n  {lines}")


def _registry(root):
    from referencing import Registry, Resource
    return Registry().with_resource("", Resource.from_contents(root))


def _fill_defaults(schema: dict, instance: dict) -> dict:
    """Fill `default`s of an object schema (recursively for nested objects)."""
    out = copy.deepcopy(instance)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and sub.get("type") == "object":
            out[key] = _fill_defaults(sub, out[key])
    return out


def _resolve_method(name: str, methods: dict, source: str, seen=()) -> dict:
    if name in seen:
        raise ParamsError(f"{source}: methods.{name}.extends: cycle {' -> '.join(seen + (name,))}")
    if name not in methods:
        raise ParamsError(f"{source}: methods.{seen[-1]}.extends: unknown method {name!r}; "
                          f"defined: {sorted(methods)}")
    raw = methods[name]
    base = _resolve_method(raw["extends"], methods, source, seen + (name,)) if "extends" in raw else {}
    merged = {k: v for k, v in base.items() if k not in ("train", "seeds")}
    merged["train"] = {**base.get("train", {}), **raw.get("train", {})}
    if "seeds" in base:
        merged["seeds"] = base["seeds"]
    merged.update({k: v for k, v in raw.items() if k not in ("extends", "train")})
    return merged


SELECT_KEYS = ("select", "select_seeds")   # dyncim.train.select: settings chosen on validation


def _check_select(cfg: dict, method: dict, schema: dict, source: str, where: tuple) -> None:
    """Every `select` candidate must be a valid setting of the method, and `select_seeds` within
    its seeds: checked here, before any job trains."""
    if "select_seeds" in cfg and "select" not in cfg:
        raise ParamsError(f"{source}: {_key(where + ('select_seeds',))}: set without `select` (nothing to choose)")
    if "select" not in cfg:
        return
    type_schema = schema["$defs"][f"method_{method['type']}"]
    base = {k: v for k, v in cfg.items() if k not in ("type", "seeds", "train", *SELECT_KEYS)}
    for i, over in enumerate(cfg["select"]):
        _validate({**base, **over}, type_schema, schema, source, prefix=where + ("select", i))
    if cfg.get("select_seeds", 1) > len(method["seeds"]):
        raise ParamsError(f"{source}: {_key(where + ('select_seeds',))}: {cfg['select_seeds']}, but the "
                          f"method has {len(method['seeds'])} seeds ({method['seeds']})")


def resolve(raw: dict, source: str = "params.yaml", check: bool = True) -> dict:
    """Validate a params mapping and return it resolved: defaults filled in, method `extends`
    chains merged, per-type method parameters checked, run lists cross-checked, and (`check`)
    the data of the run's data sets where their source reads the user's files (check_data)."""
    schema = load_schema()
    _validate(raw, schema, schema, source)
    params = _fill_defaults(schema, raw)
    for name, ds in params["datasets"].items():
        entry = data_catalog.source(ds["source"])
        if entry.settings == "synthetic":
            ds["synthetic"] = _fill_defaults(schema["$defs"]["synthetic"], ds["synthetic"])
            n_mod = len(ds["synthetic"]["modalities"])
            for i, c in enumerate(ds["synthetic"]["corrupt"]):
                if c["modality"] >= n_mod:
                    raise ParamsError(f"{source}: datasets.{name}.synthetic.corrupt.{i}.modality: "
                                      f"{c['modality']} out of range; this set has {n_mod} modalities")
                if c.get("redraw") and c["kind"] != "noisy":
                    raise ParamsError(f"{source}: datasets.{name}.synthetic.corrupt.{i}.redraw: only a "
                                      f"noisy corruption can be drawn afresh, not {c['kind']!r}")
        if entry.settings == "media":
            ds["media"] = _fill_defaults(schema["$defs"]["media"], ds.get("media", {}))
            ds["media"] = {**entry.media_defaults, **ds["media"]}
            choices = split_choices()
            if "split" in ds["media"] and ds["source"] not in choices:
                raise ParamsError(f"{source}: datasets.{name}.media.split: {ds['source']} has one split, its "
                                  f"standard one; a choice of split exists for {sorted(choices)} only")
            if ds["media"].get("split", entry.splits[0]) not in entry.splits:
                raise ParamsError(f"{source}: datasets.{name}.media.split: {ds['media']['split']!r} is not a "
                                  f"split of {ds['source']}; expected one of {list(entry.splits)}")
        if entry.settings == "files":
            ds["files"] = _fill_defaults(schema["$defs"]["files"], ds["files"])
            if "split" not in ds["files"]:   # a stratified split, from the top-level `split:`
                ds["files"]["split"] = copy.deepcopy(params["split"])
            _check_files(ds["files"], source, ("datasets", name, "files"))
        for key in ("method_train", "method_params"):
            for m in ds.get(key, {}):
                if m not in params["methods"]:
                    raise ParamsError(f"{source}: datasets.{name}.{key}.{m}: unknown method; "
                                      f"defined: {sorted(params['methods'])}")

    methods = {}
    for name in params["methods"]:
        m = _resolve_method(name, params["methods"], source)
        mtype = m.get("type")
        type_schema = schema["$defs"][f"method_{mtype}"]
        own = {k: v for k, v in m.items() if k not in ("type", "seeds", "train", *SELECT_KEYS)}
        _validate(own, type_schema, schema, source, prefix=("methods", name))
        m.update(_fill_defaults(type_schema, own))
        m.setdefault("seeds", params["seeds"])
        _check_select(m, m, schema, source, ("methods", name))
        methods[name] = m
    params["methods"] = methods
    for name, m in methods.items():
        if m["type"] == "dyncim" and m["gate_input_grad"] and m["impl"] != "reference":
            raise ParamsError(f"{source}: methods.{name}.gate_input_grad: needs impl: reference (the fused "
                              f"step's closed-form gradients treat the gate's inputs as constants)")
    for d, ds in params["datasets"].items():
        for m, over in ds.get("method_params", {}).items():
            where = ("datasets", d, "method_params", m)
            own = {k: v for k, v in methods[m].items() if k not in ("type", "seeds", "train", *SELECT_KEYS)}
            for key in SELECT_KEYS:
                if key in over:
                    _validate(over[key], schema["$defs"][key], schema, source, prefix=where + (key,))
            plain = {k: v for k, v in over.items() if k not in SELECT_KEYS}
            _validate({**own, **plain}, schema["$defs"][f"method_{methods[m]['type']}"], schema, source,
                      prefix=where)
            _check_select({**methods[m], **over}, methods[m], schema, source, where)

    for key, defined in (("datasets", params["datasets"]), ("methods", methods)):
        for name in params["run"][key]:
            if name not in defined:
                raise ParamsError(f"{source}: run.{key}: {name!r} is not defined under {key}; "
                                  f"defined: {sorted(defined)}")
    for d in params["run"]["datasets"]:
        n = n_modalities(params["datasets"][d])
        for m in params["run"]["methods"]:
            if data_catalog.is_multilabel(params["datasets"][d]) and not CATALOG[methods[m]["type"]].multilabel:
                raise ParamsError(f"{source}: run.methods: {m!r} ({methods[m]['type']}) does not support "
                                  f"multi-label data sets ({d}); supported: {', '.join(multilabel_methods())}")
            limit = CATALOG[methods[m]["type"]].max_modalities
            if limit is not None and n > limit:
                raise ParamsError(f"{source}: run.methods: {m!r} ({methods[m]['type']}) is defined by "
                                  f"its paper for at most {limit} modalities, but data set {d!r} has {n}")
    for m in params["run"]["methods"]:
        _check_teacher(m, methods, params["run"]["methods"], source)
    if params["split"]["train"] + params["split"]["val"] >= 1:
        raise ParamsError(f"{source}: split: train + val must be below 1 (the rest is test)")
    for d in params["run"]["datasets"] if check else ():   # the data itself, before any job runs
        check_data(params["datasets"][d], source, d)
    for d in params["run"]["datasets"]:   # (a user's files: their kinds are known once they check)
        stages = [m for m in params["run"]["methods"] if CATALOG[methods[m]["type"]].needs_stages]
        if stages and "sequence" in data_catalog.modality_kinds(params["datasets"][d]):
            raise ParamsError(f"{source}: run.methods: {stages[0]!r} ({methods[stages[0]]['type']}) works "
                              f"between the encoders' stages, which sequence encoders do not have, but data "
                              f"set {d!r} has sequence modalities; leave {stages[0]!r} out of run.methods for it")
    return params


def _check_teacher(m: str, methods: dict, run: list, source: str) -> None:
    """A method that learns from another run of the pipeline (UMT: its frozen unimodal teachers)
    names a unimodal method of the run list that trains every one of its seeds."""
    teacher = methods[m].get("teacher")
    if teacher is None:
        return
    where = f"{source}: methods.{m}.teacher: {teacher!r}"
    if teacher not in methods or methods[teacher]["type"] != "unimodal":
        raise ParamsError(f"{where} is not a method of type unimodal; defined: "
                          f"{sorted(k for k, v in methods.items() if v['type'] == 'unimodal')}")
    if teacher not in run:
        raise ParamsError(f"{where} is not in run.methods; {m} learns from its runs, so list it there too")
    missing = sorted(set(methods[m]["seeds"]) - set(methods[teacher]["seeds"]))
    if missing:
        raise ParamsError(f"{where} has no seed(s) {missing}; expected every seed of {m}")


def _check_files(files: dict, source: str, where: tuple) -> None:
    """What the schema cannot say about a `files` entry (source files, dyncim.data.sources.files)."""
    names = [m["name"] for m in files["modalities"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParamsError(f"{source}: {_key(where + ('modalities',))}: the name(s) {dup} are given twice; "
                          f"expected one name per modality")
    split = files["split"]
    if "path" not in split and split["train"] + split["val"] >= 1:
        raise ParamsError(f"{source}: {_key(where + ('split',))}: train + val must be below 1 (the rest is test)")


def check_data(ds: dict, source: str = "params.yaml", name: str = "") -> None:
    """A data configuration's own data checked by its source (the catalog's `check`: a user's
    files, read in full), as a ParamsError naming the data set, the file, the row or column and
    what was expected; nothing for sources whose data come with the pipeline."""
    if not data_catalog.source(ds["source"]).check:
        return
    from .data.sources import module
    try:
        module(ds["source"]).check(ds)
    except (ValueError, FileNotFoundError) as e:
        raise ParamsError(f"{source}: datasets.{name}: {e}") from None


def read_yaml(path: str | Path) -> dict:
    """A params or profile file's mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` (changed in place, and returned) as `snakemake --configfile`
    merges a profile over params.yaml: mappings key by key, any other value replaced."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def load(path: str | Path = "params.yaml") -> dict:
    return resolve(read_yaml(path), str(Path(path)))


# What each data source is and where its code lives: dyncim.data.catalog (torch-free).
# `media` keys that say where raw files come from or how fast they are processed, not which
# samples, labels or split a set has (left out of the report's protocol, dyncim.report.sanity)
MEDIA_LOCATION_KEYS = frozenset({"base_url", "from_dir", "clip_list", "url", "sha256", "from_path", "link",
                                 "jobs", "workers", "index", "lists", "batch_size"})


def split_choices() -> set[str]:
    """Sources with a choice of split (`media.split`, absent = standard): CREMA-D's actor-disjoint
    alternative (dyncim.data.sources.actor_split)."""
    return {n for n, e in data_catalog.CATALOG.items() if len(e.splits) > 1}


def multilabel_methods() -> list[str]:
    return sorted(t for t, e in CATALOG.items() if e.multilabel)


def uses_store(ds: dict) -> bool:
    """Whether a data set trains from a feature store (the paper-scale sets, a user's own files:
    a media step, then an extraction step), else from one feature file (mfeat, synthetic)."""
    return data_catalog.uses_store(ds)



def media_split(ds: dict) -> str:
    """A paper-scale set's split: `media.split`, or `standard` (the shipped / published one)."""
    return ds.get("media", {}).get("split", "standard")


def split_description(params: dict, data: str) -> str:
    """Which split a data set's numbers are on, in words: a paper-scale set's split name
    (`standard`, `actor-disjoint`), a user's split column, or a stratified split (the embedded
    sets': from `split:`)."""
    ds = params["datasets"][data]
    settings = data_catalog.source(ds["source"]).settings
    if settings == "media":
        return media_split(ds)
    s = ds["files"]["split"] if settings == "files" else params["split"]
    if "path" in s:
        return f"given: {s['path']}" + (f" column {s['column']}" if "column" in s else "")
    pct = [round(100 * x, 1) for x in (s["train"], s["val"], 1 - s["train"] - s["val"])]
    return "stratified " + "/".join(f"{x:g}" for x in pct) + f" seed {s['seed']}"


def data_info(params: dict, data: str) -> dict:
    """What the report says about a data set: its source, its split in words and its protocol
    (the `media` settings that define its samples and labels, e.g. CREMA-D's split, MOSEI's task),
    which the sanity ranges are matched against (dyncim.report.sanity)."""
    ds = params["datasets"][data]
    protocol = {}
    if data_catalog.source(ds["source"]).settings == "media":
        protocol = {k: v for k, v in ds["media"].items() if k not in MEDIA_LOCATION_KEYS}
        protocol["split"] = media_split(ds)
    elif data_catalog.source(ds["source"]).settings == "files":
        protocol = {"split": split_description(params, data)}
    return {"source": ds["source"], "split": split_description(params, data), "protocol": protocol}


def n_modalities(ds: dict) -> int:
    return data_catalog.n_modalities(ds)


def data_device(params: dict, data: str) -> str:
    """Where a data set's training and evaluation run: its own `device` where set; under `auto`,
    the feature-vector sets (mfeat, synthetic: small MLPs, where a GPU's launch latency costs more
    than it saves and jobs run in parallel, one per core) stay on the CPU and the paper-scale sets
    use CUDA when there is one."""
    ds = params["datasets"][data]
    if "device" in ds:
        return ds["device"]
    if params["device"] == "auto" and data_catalog.source(ds["source"]).device_auto == "cpu":
        return "cpu"
    return params["device"]


def data_file(params: dict, data: str) -> str:
    """What a data set's training reads: its feature file, or its store's `store.json`."""
    from . import paths
    return paths.store_ready(data) if uses_store(params["datasets"][data]) else paths.feature_file(data)


def train_config(params: dict, data: str, method: str) -> dict:
    """The training hyper-parameters of one data set x method, with every override applied."""
    ds = params["datasets"][data]
    cfg = {**TRAIN_DEFAULTS, **params["train"], **ds.get("train", {}),
           **params["methods"][method].get("train", {}), **ds.get("method_train", {}).get(method, {})}
    return cfg


def with_method_defaults(cfg: dict) -> dict:
    """A method configuration saved by an earlier version, completed with the defaults of keys
    added since (a checkpoint stays loadable; the added keys' defaults keep the old behaviour)."""
    return _fill_defaults(load_schema()["$defs"][f"method_{cfg['type']}"], cfg)


def method_config(params: dict, method: str, data: str | None = None) -> dict:
    """A method's parameters; on a data set, with that data set's `method_params` overrides (for
    methods whose official code uses other values per data set)."""
    cfg = {k: v for k, v in params["methods"][method].items() if k not in ("train", "seeds")}
    if data is not None:
        cfg.update(params["datasets"][data].get("method_params", {}).get(method, {}))
    return cfg


def dataset_config(params: dict, data: str) -> dict:
    """What defines a data configuration's samples and features (not its per-method overrides)."""
    return {k: v for k, v in params["datasets"][data].items()
            if k not in ("train", "method_train", "method_params")}


def run_fingerprint(params: dict, data: str, method: str, mcfg: dict | None = None) -> str:
    """Everything that determines one run's result, as canonical JSON (the checkpoint's
    configuration check); `mcfg`: the method configuration trained, where a candidate of
    `select` (dyncim.train.select) replaces the params'."""
    return json.dumps({"data": dataset_config(params, data), "split": params["split"],
                       "train": train_config(params, data, method),
                       "method": method_config(params, method, data) if mcfg is None else mcfg},
                      sort_keys=True)


# --- job configurations ----------------------------------------------------------------------
# What one pipeline job reads, resolved from the params: the Snakefile passes it to the CLI
# (`--job`, canonical JSON, also the job's rerun trigger); the CLI builds the same from
# params.yaml when run by hand. A train, evaluate or report job's configuration has the shape of
# the params, pruned to that job, so the step functions take either.

def split_name(params: dict, data: str) -> str:
    """Configurations of a source with a shared split (the catalog's `shared_split`: mfeat's, of
    the 2000 digits) use the one named after the source; any other set has its own."""
    src = params["datasets"][data]["source"]
    return src if data_catalog.source(src).shared_split is not None else data


def split_job(params: dict, split: str) -> dict:
    """Split `split`: a shared one's labels come from the source's shared configuration (mfeat:
    every view; they must agree), any other from the data set's own."""
    shared = data_catalog.CATALOG.get(split)
    if shared is not None and shared.shared_split is not None:
        ds = {"source": split, **copy.deepcopy(shared.shared_split)}
    else:
        ds = dataset_config(params, split)
    return {"split": params["split"], "dataset": ds}


def data_job(params: dict, data: str) -> dict:
    """Feature vectors, or a paper-scale set's extraction: its source and the `media` settings that
    shape the store (not where the raw files came from)."""
    ds = dataset_config(params, data)
    entry = data_catalog.source(ds["source"])
    if entry.settings == "media":
        return {"dataset": {"source": ds["source"], "media": {k: ds["media"][k] for k in entry.job_keys}}}
    if uses_store(ds):
        return {"dataset": {"source": ds["source"], entry.settings: ds[entry.settings]}}
    return {"dataset": ds}


def media_job(params: dict, data: str) -> dict:
    """Bringing in a store set's raw files: its source and settings (`media`, or a user's `files`)."""
    ds = params["datasets"][data]
    key = data_catalog.source(ds["source"]).settings
    return {"dataset": {"source": ds["source"], key: ds[key]}}


def extract_threads(params: dict, data: str) -> int:
    """The processes a store set's extraction step uses (`media.workers`; 1 for a user's files)."""
    return params["datasets"][data].get("media", {}).get("workers", 1)


def input_files(params: dict, data: str) -> list[str]:
    """The user's files a data set's steps read (the catalog's `inputs`: source `files`)."""
    ds = params["datasets"][data]
    if not data_catalog.source(ds["source"]).inputs:
        return []
    from .data.sources import module
    return module(ds["source"]).inputs(ds)


MEDIA_PATH_KEYS = ("from_dir", "clip_list", "index", "lists", "from_path")  # a user's folders and files


def media_paths(params: dict, data: str) -> list[str]:
    """The user's folders and files a data set's media step reads (its `media` settings that name
    one: from_dir, clip_list, index, lists, from_path)."""
    media = params["datasets"][data].get("media") or {}
    return [str(media[k]) for k in MEDIA_PATH_KEYS if isinstance(media.get(k), str) and media[k]]


def media_listing(params: dict, data: str) -> str:
    """A listing fingerprint (names, sizes, mtimes; dyncim.data.io.discovery.listing_fingerprint) of
    the user's folders and files a data set's media step reads, "" when it reads none: the media
    rule's param, so that a clip added to the user's folder, or a list file edited, reruns it
    (and what depends on it), while an unchanged tree reruns nothing."""
    where = media_paths(params, data)
    if not where:
        return ""
    from .data.io.discovery import listing_fingerprint
    return listing_fingerprint(where)


def raw_files(source: str) -> list[str]:
    """The files a downloading source's download step writes (the catalog's `downloads`)."""
    from . import paths
    return [paths.raw_file(source, f) for f in data_catalog.source(source).downloads]


def train_job(params: dict, data: str, method: str) -> dict:
    """One data set x method, every seed: the training and method configuration fully resolved
    (so that only what changes this job's result re-runs it)."""
    seeds = params["methods"][method]["seeds"]
    return {"device": data_device(params, data), "threads": params["threads"], "split": params["split"],
            "resident_fraction": params["resident_fraction"],
            "seeds": seeds, "train": train_config(params, data, method),
            "datasets": {data: dataset_config(params, data)},
            "methods": {method: {**method_config(params, method, data), "seeds": seeds}},
            "run": {"datasets": [data], "methods": [method]}}


def evaluate_job(params: dict, data: str) -> dict:
    """Every method and seed of the run list on one data set."""
    return {"threads": params["threads"], "device": data_device(params, data),
            "resident_fraction": params["resident_fraction"],
            "run": {"datasets": [data], "methods": params["run"]["methods"]},
            "methods": {m: {"seeds": params["methods"][m]["seeds"]} for m in params["run"]["methods"]}}


def report_job(params: dict) -> dict:
    return {"run": params["run"], "data": {d: data_info(params, d) for d in params["run"]["datasets"]},
            "methods": {m: {"type": params["methods"][m]["type"], "seeds": params["methods"][m]["seeds"]}
                        for m in params["run"]["methods"]}}


def robustness_job(params: dict, data: str) -> dict:
    """The sweep of one data set: every method and seed of the run list, the noise levels and seed."""
    return {**evaluate_job(params, data), "robustness": params["robustness"]}


def figures_job(params: dict, data: str) -> dict:
    """The figures of one data set: its run list, the methods' types (DynCIM's ablations get a
    panel of their own) and seeds."""
    return {**report_job(params), "run": {"datasets": [data], "methods": params["run"]["methods"]},
            "data": {data: data_info(params, data)}}


def figure_kinds(params: dict) -> list[str]:
    """The figures every data set gets: DynCIM's trajectories only where `dyncim` runs."""
    from .paths import FIGURE_KINDS
    return [k for k in FIGURE_KINDS if k != "dyncim" or "dyncim" in params["run"]["methods"]]


def job_json(job: dict) -> str:
    """Canonical JSON of a job configuration."""
    return json.dumps(job, sort_keys=True, separators=(",", ":"))


# --- entry points ----------------------------------------------------------------------------

def retype(value):
    """`snakemake --config key=value` reads nested values as strings (YAML's base loader): give
    integers, floats and booleans their type back, so that `--config 'train={epochs: 3}'` works."""
    if isinstance(value, dict):
        return {k: retype(v) for k, v in value.items()}
    if isinstance(value, list):
        return [retype(v) for v in value]
    if isinstance(value, str):
        for parse in (int, float):
            try:
                number = parse(value)
            except ValueError:
                continue
            if math.isfinite(number):
                return number
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def error_text(e: ParamsError) -> str:
    """The one message every entry point (CLI, Snakemake, dvc repro) prints for bad params."""
    return f"error: {e}"


def cuda_expected(device: str) -> bool:
    """Whether training will use CUDA, decided without importing torch (slow to import)."""
    import os
    import shutil
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")

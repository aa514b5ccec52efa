"""Torch-free table of the data sources: where each lives and what it is.

One entry per `source:` of a data configuration (params.yaml's `datasets`). The config loader,
the schema (dyncim.config fills in the source list and each source's rules from here) and the
Snakefile read it without importing any source's code; the steps import a source's module
(`dyncim.data.sources.<module>`, see that package for the functions each exposes) only when they
run it. Adding a data source: its module, its entry here, a profile (configs/) and its test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# kinds of modality (the model input each becomes; dyncim.data.sets.media_set.array_kind)
KINDS = ("vector", "sequence", "spectrogram", "frames", "flow")
# where a source's settings live in its data configuration (one of these keys, the others absent)
SETTINGS = ("views", "synthetic", "media", "files")


@dataclass(frozen=True)
class Source:
    module: str                   # module under dyncim.data.sources
    # (name, kind) of each modality, in order; None: the configuration chooses them (mfeat's views,
    # the synthetic kinds, a user's files)
    modalities: tuple[tuple[str, str], ...] | None
    # the step that brings raw files in: "download" (one copy in data/raw/<source>/, the files
    # named in `downloads`, shared by every configuration of the source), "media" (per
    # configuration, into data/raw/<data>/, then a marker, dyncim.paths.media_ready), None
    bring_in: str | None
    # the step that builds what training reads: "feature_file" (one feature file from a stratified
    # split, dyncim.data.sets.feature_set) or "extract" (a feature store, dyncim.data.steps.paper_store)
    build: str
    settings: str = "media"       # the data configuration's key holding its settings (SETTINGS)
    multilabel: bool | None = False   # None: the configuration says (`files.multilabel`)
    # `media.split` choices, the default first (a single one: its standard split only); empty: a
    # stratified split from params.yaml's `split:` (feature-file sources)
    splits: tuple[str, ...] = ("standard",)
    # the extraction recipe (dyncim.data.extraction.extract.RECIPES, defined by the module of the source of
    # that name); None: the module's `build` writes the store itself
    recipe: str | None = None
    downloads: tuple[str, ...] = ()   # bring_in "download": the files written into data/raw/<source>/
    # configurations of this source share one split, named after the source, made from this
    # configuration's samples (mfeat: every view; the labels of all views must agree)
    shared_split: dict | None = None
    media_required: bool = True   # settings "media": whether the configuration must have a `media` key
    media_defaults: dict = field(default_factory=dict)   # `media` defaults of this source only
    media_keys: tuple[str, ...] = ()  # `media` keys only this source reads (others: an error)
    job_keys: tuple[str, ...] = ("workers",)   # `media` keys the extraction's job passes (its rerun trigger)
    rules: dict | None = None     # a JSON-schema fragment a configuration of this source must also satisfy
    inputs: bool = False          # the module's `inputs(ds)`: files of the user's that its steps read
    check: bool = False           # the module's `check(ds, where)`: its data validated when params resolve
    device_auto: str = "device"   # under `device: auto`: "cpu" (small MLPs) or "device" (CUDA when there is one)
    about: str = ""               # one line for the schema's description and the docs


MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
# Image + text sets: frozen pretrained features (dyncim.data.extraction.image_text); their `media` model keys
# are filled in for them only (so that other sets' jobs keep their fingerprints), with these
# defaults (the schema's descriptions say the same).
IMAGE_TEXT_MEDIA = {"text_model": "bert-base-uncased", "text_revision": "main",
                    "image_model": "microsoft/resnet-50", "image_revision": "main", "batch_size": 64}
_IMAGE_TEXT_KEYS = tuple(IMAGE_TEXT_MEDIA)
_AV = (("audio", "spectrogram"), ("visual", "frames"))


def _media(*required: str, forbidden=(), one_of=None) -> dict:
    """A `media` rule: required keys, forbidden keys, exactly one of some key groups."""
    rule: dict = {}
    if required:
        rule["required"] = list(required)
    if forbidden:
        rule["not"] = {"anyOf": [{"required": [k]} for k in forbidden]}
    if one_of:
        rule["oneOf"] = [{"required": list(g)} for g in one_of]
    return {"properties": {"media": rule}}


CATALOG: dict[str, Source] = {
    "mfeat": Source("mfeat", None, "download", "feature_file", settings="views",
                    downloads=tuple(f"mfeat-{v}.csv" for v in MFEAT_VIEWS),
                    shared_split={"views": list(MFEAT_VIEWS)}, device_auto="cpu",
                    about="UCI Multiple Features: six feature views of 2000 digits, `views` the modalities"),
    "synthetic": Source("synthetic", None, None, "feature_file", settings="synthetic", device_auto="cpu",
                        about="generated here with known modality- and sample-level imbalance (docs/synthetic.md)"),
    "crema-d": Source("crema_d", _AV, "media", "extract", splits=("standard", "actor-disjoint"),
                      recipe="crema-d", media_required=False,
                      rules={"properties": {"media": {"not": {"required": ["base_url", "from_dir"]}}}},
                      about="audio + frames, downloaded or from `from_dir`"),
    "kinetics-sounds": Source("kinetics_sounds", _AV, "media", "extract", recipe="kinetics-sounds",
                              rules=_media(one_of=[["from_dir"], ["clip_list"]]),
                              about="audio + frames, located in the user's Kinetics-400 copy"),
    "cmu-mosei": Source("mosei", (("text", "sequence"), ("audio", "sequence"), ("vision", "sequence")),
                        "media", "extract", job_keys=("workers", "task"),
                        rules=_media(one_of=[["url", "sha256"], ["from_path"]]),
                        about="text, audio, vision sequences from the pre-extracted pickle"),
    "ave": Source("ave", _AV, "media", "extract", recipe="ave",
                  rules=_media("from_dir", forbidden=["clip_list", "index"]),
                  about="audio + frames from the released folder"),
    "vggsound": Source("vggsound", _AV, "media", "extract", recipe="vggsound", media_keys=("index",),
                       rules=_media("index", one_of=[["from_dir"], ["clip_list"]]),
                       about="audio + frames, the clips and the official vggsound.csv"),
    "ucf-101": Source("ucf101", (("visual", "frames"), ("flow", "flow")), "media", "extract", recipe="ucf-101",
                      media_keys=("lists", "val_groups", "val_seed"),
                      rules=_media("from_dir", forbidden=["clip_list", "base_url"]),
                      about="RGB frames + optical flow from the videos"),
    "food-101": Source("food101", (("text", "vector"), ("image", "vector")), "media", "extract",
                       media_defaults=IMAGE_TEXT_MEDIA, media_keys=_IMAGE_TEXT_KEYS, job_keys=_IMAGE_TEXT_KEYS,
                       rules=_media("from_dir", forbidden=["clip_list", "base_url", "url", "from_path"]),
                       about="UPMC Food-101, image + text, frozen pretrained features"),
    "mm-imdb": Source("mmimdb", (("text", "vector"), ("image", "vector")), "media", "extract", multilabel=True,
                      media_defaults=IMAGE_TEXT_MEDIA, media_keys=_IMAGE_TEXT_KEYS, job_keys=_IMAGE_TEXT_KEYS,
                      rules=_media("from_dir", forbidden=["clip_list", "base_url", "url", "from_path"]),
                      about="multi-label genres, image + text, frozen pretrained features"),
    "files": Source("files", None, "media", "extract", settings="files", multilabel=None, splits=(),
                    inputs=True, check=True, job_keys=(),
                    about="the user's own feature arrays (.npy / .npz / .csv), a label file or column (docs/own-data.md)"),
}


def source(name: str) -> Source:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"source {name!r}: not a data source; expected one of {sorted(CATALOG)}") from None


def module_name(name: str) -> str:
    """The module of source `name`, as `dyncim.codedeps` and importlib name it."""
    return f"dyncim.data.sources.{source(name).module}"


def recipes() -> list[str]:
    """The extraction recipes' names (dyncim.data.extraction.extract.RECIPES): each is defined by the module
    of the source of that name (its `recipe()`), and other sources may name it too."""
    return [n for n, e in CATALOG.items() if e.recipe == n]


def split_choices() -> list[str]:
    """Every `media.split` name some source offers (the schema's enum)."""
    return list(dict.fromkeys(s for e in CATALOG.values() for s in e.splits))


def n_modalities(ds: dict) -> int:
    """How many modalities a data configuration has."""
    e = source(ds["source"])
    if e.modalities is not None:
        return len(e.modalities)
    s = ds[e.settings]
    return len(s) if e.settings == "views" else len(s["modalities"])


def modality_kinds(ds: dict) -> list[str]:
    """The kinds of a data configuration's modalities (KINDS): as its source fixes them; vectors
    for mfeat's views and the synthetic kinds; a user's files by their arrays' shapes."""
    e = source(ds["source"])
    if e.modalities is not None:
        return [kind for _, kind in e.modalities]
    if e.settings == "files":
        from .sources import files   # numpy only: reads each array's header
        return files.kinds(ds)
    return ["vector"] * n_modalities(ds)


def is_multilabel(ds: dict) -> bool:
    e = source(ds["source"])
    return bool(ds[e.settings].get("multilabel", False)) if e.multilabel is None else e.multilabel


def uses_store(ds: dict) -> bool:
    """Whether training reads a feature store (else one feature file)."""
    return source(ds["source"]).build == "extract"


def dataset_rules() -> list[dict]:
    """The schema's per-source rules for a data configuration (`$defs/dataset/allOf`): each
    source's settings key present (where required) and the others' absent, its own `rules`, and
    the `media` keys a source reads alone kept off every other source."""
    out = []
    for name, e in CATALOG.items():
        then: dict = {}
        required = [e.settings] if e.settings != "media" or e.media_required else []
        if required:
            then["required"] = required
        others = [k for k in SETTINGS if k != e.settings and not (k == "media" and e.settings == "media")]
        then["not"] = {"anyOf": [{"required": [k]} for k in others]}
        rule = {"if": {"properties": {"source": {"const": name}}}, "then": then}
        if e.rules:
            rule = {"if": rule["if"], "then": {"allOf": [then, e.rules]}}
        out.append(rule)
    owners: dict[str, list[str]] = {}
    for name, e in CATALOG.items():
        for k in e.media_keys:
            owners.setdefault(k, []).append(name)
    groups: dict[tuple, list[str]] = {}
    for k, names in owners.items():
        groups.setdefault(tuple(names), []).append(k)
    for names, keys in groups.items():
        out.append({"if": {"properties": {"source": {"not": {"enum": list(names)}}}},
                    "then": {"properties": {"media": {"not": {"anyOf": [{"required": [k]} for k in keys]}}}}})
    return out

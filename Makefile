# `make run`: the whole embedded benchmark; `make test`: the test suite; `make lint`: the
# workflow's lints and formatting; `make report`: the run, then Snakemake's HTML report. Each
# creates .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# the test and lint tools (pytest, librosa, snakefmt, and the `paper` extra the tests exercise)
# only where tests or lints run: `make run` installs the package alone, a minute sooner
TSTAMP := $(VENV)/.installed-test-stamp
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run full quick report test test-fast lint repro pull bench bench-gpu tensorboard clean

# pip byte-compiles every package at install (a minute or more here): worth it, since with
# PYTHONDONTWRITEBYTECODE set (as on this project's machines) nothing else would, and every job
# would compile torch's modules again when it imports them (17 s instead of 7.5 s here)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,lint]"
	touch $(TSTAMP)

run: $(STAMP)
	snakemake --cores all
	@cat results/summary.md

# Snakemake's browsable HTML report of the run (figures, tables, REPORT.md, the DAG, runtimes)
report: run
	snakemake --report results/report.html
	@echo "open results/report.html"

# every embedded configuration (configs/full.yaml): the README's full table, about 20 min here
full: $(STAMP)
	snakemake --cores all --configfile configs/full.yaml
	@cat results/summary.md

quick: $(STAMP)
	snakemake --cores all --configfile configs/quick.yaml
	@cat results/summary.md

# `make slurm`: adds Snakemake's Slurm executor plugin to .venv (the optional extra `slurm`), for
# `snakemake --workflow-profile profiles/slurm` (README, "Running on a cluster")
.PHONY: slurm
slurm: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[slurm]"

# `make paper`: what some paper-scale sets need beyond the core install (the optional extra
# `paper`: OpenCV for UCF-101's optical flow, transformers for Food-101 and MM-IMDb; docs/data.md)
.PHONY: paper
paper: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[paper]"

# Test files run on up to 4 processes (2 here), each file whole on one process (its module
# fixtures are built once): the end-to-end tests spend much of their time waiting on their
# snakemake/dvc/Slurm subprocesses, so two at a time take about two thirds of the time
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(TSTAMP)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(TSTAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow"

lint: $(TSTAMP)
	$(PY) .ci/snakemake-lint
	snakefmt --check Snakefile workflow/

# DVC only where it runs: `make run` drives Snakemake alone and installs a minute sooner without it
DSTAMP := $(VENV)/.installed-dvc-stamp
$(DSTAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dvc]"
	touch $(DSTAMP)

repro: $(DSTAMP)
	dvc repro

# A teammate's clone: the data and results of the commit from the DVC remote (docs/dvc-remote.md);
# `--touch` then gives the pulled files Snakemake's order (a checkout writes them in any order), so
# neither tool re-runs anything
pull: $(DSTAMP)
	dvc pull
	snakemake --touch --cores 1 > /dev/null

bench: $(DSTAMP)
	$(PY) -m dyncim.bench.timings

# On a machine with a GPU: a CREMA-D-shaped epoch of joint and DynCIM with and without bf16
# (samples/s, GPU busy fraction, peak memory) and the embedded default end to end (dyncim/bench/gpu.py).
bench-gpu: $(STAMP)
	$(PY) -m dyncim.bench.gpu --embedded

tensorboard: $(STAMP)
	tensorboard --logdir runs

# The offline GPU check (docs/gpu.md, resources/gpu-node/README.md). `make gpu-wheels`: the wheels
# the node lacks (resources/gpu-node/carry.txt) for its CPython 3.12, into .gpu-wheels/, which
# travels with the checkout; fails if the two exceed the 64 MiB a node can be sent. `make
# gpu-rehearsal`: `.ci/gpu-check --dry` in a fresh venv holding only the node's packages
# (resources/gpu-node/node.txt) with the same pins built for this Python: the wheel set complete.
.PHONY: gpu-wheels gpu-rehearsal
gpu-wheels:
	.ci/gpu-wheels

gpu-rehearsal:
	.ci/gpu-rehearsal

clean:
	rm -rf data models runs results bench logs .snakemake dvc.lock

"""The pipeline through profiles/slurm on a real Slurm: Debian's slurm-wlm as a one-node cluster on
127.0.0.1 (munged, slurmctld, slurmd started here from a temporary slurm.conf, never /etc), with two
count-only fake GPUs so the profile's `gpu=1` requests can be granted.

A small configuration runs through the profile as a cluster user runs it; its evaluation files
must equal those of a local run, although one training job is cancelled (`scancel`) mid-run: the
profile's retries resubmit it and it resumes from its checkpoint.

Needs root and apt-get (it installs slurm-wlm and munge if missing) and the Slurm executor plugin
(`pip install -e '.[slurm]'`, `make slurm`; .ci/run installs both); skips with the reason otherwise.
"""
import importlib.util
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from dyncim import paths
from tests.conftest import copy_repo, venv_env

pytestmark = pytest.mark.slow

CONFIG = "cluster-test.yaml"
DATA, METHODS, EPOCHS = "syn", ("joint", "dyncim"), 80
KILLED = "dyncim"   # the training job cancelled mid-run
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
GPU_RULES = ("train", "evaluate", "robustness")   # the profile's `gpu: 1`


def write_config(repo: Path) -> None:
    """One seed of joint (short) and DynCIM (long enough to be cancelled after its first
    checkpoint) on a small synthetic set, merged over params.yaml with --configfile."""
    cfg = {
        "seeds": [0],
        "train": {"epochs": EPOCHS, "hidden": [16], "checkpoint_every": 2, "lr_step": 0},
        "datasets": {DATA: {"source": "synthetic", "synthetic": {
            "modalities": ["dominant", "xor"], "per_class": 40, "dominant": {"dim": 32},
            "corrupt": [{"modality": 0, "kind": "misleading", "fraction": 0.2}]}}},
        "run": {"datasets": [DATA], "methods": list(METHODS)},
        "methods": {"joint": {"train": {"epochs": 10}}, "dyncim": {"seeds": [0]}},
    }
    (repo / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))


def tool(name: str) -> str | None:
    return shutil.which(name, path=SYSTEM_PATH)


def missing_slurm() -> list[str]:
    return [c for c in DAEMONS + CLIENTS if not tool(c)]


def require_slurm() -> None:
    """Debian's slurm-wlm and munge (installed here when root with apt-get) and the executor plugin."""
    if missing_slurm():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("a real Slurm needs Debian's slurm-wlm and munge; installing them needs root and "
                        f"apt-get (missing here: {', '.join(missing_slurm())})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            r = subprocess.run(install, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"apt-get could not install slurm-wlm and munge: {r.stderr[-500:]}")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged (as user munge) needs root")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("no user munge (Debian's munge package creates it)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("the Slurm executor plugin is not installed: pip install -e '.[slurm]' (or make slurm)")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait(check, what, timeout, procs=(), every=0.05):
    t0 = time.time()
    while not (found := check()):
        for p in procs:
            assert p.poll() is None, f"{p.args[0]} exited while waiting for {what}"
        assert time.time() - t0 < timeout, f"no {what} after {timeout} s"
        time.sleep(every)
    return found


class Cluster:
    """A one-node Slurm on 127.0.0.1; every file under `base`; the daemons are this test's
    children, stopped by their pids."""

    def __init__(self, base: Path):
        self.base, self.procs = base, []
        self.host = socket.gethostname().split(".")[0]
        self.conf = base / "slurm.conf"
        self.env = {**venv_env(), "SLURM_CONF": str(self.conf)}

    def start(self):
        b, munge = self.base, pwd.getpwnam("munge")
        os.chmod(b, 0o711)                     # munged (user munge) reaches its folder through it
        m = b / "munge"
        m.mkdir(mode=0o711)
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (m, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        key.chmod(0o600)
        sock = m / "munge.socket"
        self.spawn(["munged", "--foreground", f"--socket={sock}", f"--key-file={key}",
                    f"--log-file={m}/munged.log", f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed"],
                   user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        wait(sock.exists, "munge socket", 30, self.procs)
        for d in ("state", "spool"):
            (b / d).mkdir()
        # count-only GPUs: Slurm grants them (and sets CUDA_VISIBLE_DEVICES); training stays on the CPU
        (b / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File=/dev/null,/dev/zero\n")
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text("\n".join([
            "ClusterName=dyncimtest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            f"StateSaveLocation={b}/state",
            f"SlurmdSpoolDir={b}/spool",
            f"SlurmctldPidFile={b}/slurmctld.pid",
            f"SlurmdPidFile={b}/slurmd.pid",
            f"SlurmctldLogFile={b}/slurmctld.log",
            f"SlurmdLogFile={b}/slurmd.log",
            "AccountingStorageType=accounting_storage/none",   # no slurmdbd: sacct has nothing to say
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SlurmdParameters=config_overrides",   # a node as large as the profile's requests
            "ReturnToService=2",
            "MinJobAge=300",                       # squeue reports finished jobs for 5 minutes
            "GresTypes=gpu",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=128000 Gres=gpu:2 State=UNKNOWN",
            f"PartitionName=main Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        self.spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self.spawn(["slurmd", "-D", "-f", str(self.conf)])
        wait(lambda: self.slurm("sinfo", "-h", "-o", "%t", check=False).strip() == "idle", "idle node", 60,
             self.procs, every=0.2)
        # The executor's job step (snakemake-executor-plugin-slurm-jobstep 0.6.1) drops every SLURM_*
        # variable before its inner `srun`, SLURM_CONF included: on a cluster, srun then finds
        # /etc/slurm/slurm.conf or slurmd's configless cache; this cluster has neither, so its jobs
        # see an `srun` that puts SLURM_CONF back.
        shim = b / "bin"
        shim.mkdir()
        (shim / "srun").write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {tool("srun")} "$@"\n')
        (shim / "srun").chmod(0o755)
        self.env["PATH"] = f"{shim}{os.pathsep}{self.env['PATH']}"
        return self

    def spawn(self, cmd, **kw):
        with open(self.base / f"{cmd[0]}.out", "w") as log:
            self.procs.append(subprocess.Popen([tool(cmd[0]), *cmd[1:]], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, **kw))

    def slurm(self, *cmd, check=True) -> str:
        r = subprocess.run([tool(cmd[0]), *cmd[1:]], env=self.env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0 or not check, f"{cmd}: {r.stderr}"
        return r.stdout

    def jobs(self) -> list[dict]:
        """Every job the controller knows (finished ones for MinJobAge): id, state, comment (the
        executor writes rule_<rule>_wildcards_<values> there)."""
        out = self.slurm("squeue", "--states=all", "-h", "-o", "%i|%T|%k", check=False)
        return [dict(zip(("id", "state", "comment"), line.split("|", 2))) for line in out.splitlines()]

    def stop(self):
        """Cancel what still runs, then stop the daemons this test started (by pid), newest first."""
        try:
            if any(j["state"] in ("RUNNING", "PENDING", "COMPLETING") for j in self.jobs()):
                self.slurm("scancel", "--full", "--partition=main", check=False)
                wait(lambda: not any(j["state"] in ("RUNNING", "COMPLETING") for j in self.jobs()),
                     "jobs cancelled", 30, every=0.2)
        finally:
            for p in reversed(self.procs):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()


@pytest.fixture(scope="module")
def cluster():
    require_slurm()
    base = Path(tempfile.mkdtemp(prefix="dyncim-slurm-"))
    c = Cluster(base)
    try:
        yield c.start()
    finally:
        c.stop()
        assert all(p.poll() is not None for p in c.procs)
        shutil.rmtree(base, ignore_errors=True)


def minutes(limit: str) -> int:
    """A Slurm time limit ([days-]hours:minutes:seconds) in minutes."""
    days, _, clock = limit.rpartition("-")
    h, m, _ = map(int, clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m


def requested(repo: Path, rule: str) -> dict:
    """What profiles/slurm asks for a rule's jobs: its default-resources, then its set-resources."""
    profile = yaml.safe_load((repo / "profiles/slurm/config.yaml").read_text())
    res = dict(r.split("=", 1) for r in profile["default-resources"])
    res.update(profile["set-resources"].get(rule, {}))
    return {k: int(v) if str(v).isdigit() else v for k, v in res.items()}


def evals(repo: Path) -> dict:
    return {m: json.loads((repo / paths.eval_file(DATA, m, 0)).read_text()) for m in METHODS}


def test_the_slurm_profile_runs_the_pipeline_and_a_cancelled_training_resumes(cluster, tmp_path):
    local, run = copy_repo(tmp_path / "local"), copy_repo(tmp_path / "slurm")
    for repo in (local, run):
        write_config(repo)
    # the reference: the same configuration on this machine (profiles/default), meanwhile, niced
    # (the executor notices a finished job 1, 12, 33, 64 s after its submission)
    ref = subprocess.Popen(["nice", "-n", "10", "snakemake", "evaluate_all", "--cores", "1", "--configfile", CONFIG],
                           cwd=local, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the split made here first (one Slurm step fewer: each costs 12-33 s of the executor's status
    # checks); features, training and evaluation go through Slurm
    subprocess.run(["snakemake", paths.split_file(DATA), "--cores", "1", "--configfile", CONFIG], cwd=run,
                   env=venv_env(), check=True, capture_output=True)
    # as a cluster user runs it, but checking the jobs' status from 1 s on (the executor waits 40 s
    # and then 10 s more at each check until a job ends: right on a cluster, slow for a test)
    out = open(tmp_path / "snakemake.log", "w+")
    proc = subprocess.Popen(["snakemake", "evaluate_all", "--workflow-profile", "profiles/slurm",
                             "--configfile", CONFIG, "--seconds-between-status-checks", "1",
                             "--slurm-init-seconds-before-status-checks", "1"],
                            cwd=run, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        ckpt = run / paths.model_dir(DATA, KILLED) / "seed0" / "last.pt"
        wait(ckpt.exists, "the training job's first checkpoint", 240, [proc])
        time.sleep(0.2)   # somewhere inside a later epoch
        comment = f"rule_train_wildcards_{DATA}_{KILLED}"
        job = next((j for j in cluster.jobs() if j["comment"] == comment and j["state"] == "RUNNING"), None)
        assert job, cluster.jobs()
        cluster.slurm("scancel", job["id"])
        assert not (run / paths.manifest(DATA, KILLED)).exists(), "finished before it was cancelled"
        proc.wait(timeout=300)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        out.seek(0)
        raise AssertionError(f"{e}\n{out.read()[-5000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ref_out = ref.communicate(timeout=300)[0]
    out.seek(0)
    log = out.read()
    out.close()
    assert proc.returncode == 0, log[-5000:]
    assert ref.returncode == 0, ref_out[-3000:]

    # the cancelled job was resubmitted (the profile's retries) and continued from its checkpoint
    states = {j["id"]: j for j in cluster.jobs()}
    assert states[job["id"]]["state"] == "CANCELLED", states
    # features, train x 2, the cancelled one again, evaluate: each an sbatch job
    assert log.count("has been submitted with SLURM jobid") == 5, log[-3000:]
    assert "Trying to restart job" in log
    train_log = (run / paths.log_file("train", DATA, KILLED)).read_text()
    assert "resumed from" in train_log and "at epoch" in train_log, train_log
    resumed_at = int(train_log.split("resumed from")[1].split("at epoch")[1].split()[0])
    assert 0 < resumed_at < EPOCHS
    assert torch.load(ckpt, weights_only=False)["epoch"] == EPOCHS

    # the same numbers as the local run
    assert evals(run) == evals(local)

    # each job asked Slurm for what the profile sets for its rule: a GPU for train and evaluate
    # (sbatch --gpus=1) and none for the data steps, CPUs, memory and time limit
    rules = set()
    for j in cluster.jobs():
        rule = j["comment"].removeprefix("rule_").split("_wildcards_")[0]
        shown = cluster.slurm("scontrol", "show", "job", "-o", j["id"])
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        want = requested(run, rule)
        assert bool(re.search(r"TresPerJob=gres[:/]gpu:1\b", shown)) == (rule in GPU_RULES), (rule, shown)
        assert int(fields["CPUs/Task"]) == want.get("cpus_per_task", 1), (rule, shown)
        assert fields["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, shown)
        assert minutes(fields["TimeLimit"]) == want["runtime"], (rule, shown)
        rules.add(rule)
    assert rules == {"feature_file", "train", "evaluate"}
    # every job's output in its rule's log, on the shared file system
    for rule, wc in (("feature_file", [DATA]), ("train", [DATA, "joint"]), ("evaluate", [DATA])):
        assert (run / paths.log_file(rule, *wc)).exists(), rule

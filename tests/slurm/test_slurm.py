"""The project's own sbatch script on a real two-node Slurm cluster: a 2-node tiny-cpu run, and a
`scontrol requeue` mid-training that resumes from the checkpoint and ends on the same step."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import REPO
from tests.slurm.cluster import Cluster

HAVE_SLURM = bool(shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"))
# In CI (.ci/run installs Slurm) a missing Slurm fails the fixture below; elsewhere it is skipped.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_SLURM and not os.environ.get("CI"),
                                                   reason="slurm-wlm and munge are not installed")]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    assert HAVE_SLURM, "CI must install slurm-wlm and munge"
    assert os.geteuid() == 0, "the test cluster runs its daemons as root"
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def submit(slurm, out, *overrides, wait=True):
    args = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + [
        "launch/multi_node.sbatch", "recipes/tiny-cpu.yaml", "accelerate_configs/ddp.yaml",
        "--set", f"output.dir={out}", "--set", "training.eval_strategy=no"]
    for o in overrides:
        args += ["--set", o]
    res = slurm.run(*args, cwd=REPO, timeout=1200) if wait else slurm.run(*args, cwd=REPO)
    return res


def log_of(job_id: str) -> str:
    return (REPO / f"slurm-medsft-{job_id}.log").read_text()


def test_two_node_job(slurm, tmp_path, tiny_dir):
    out = tmp_path / "run"
    res = submit(slurm, out, "training.max_steps=4")
    job_id = res.stdout.strip().split(";")[0]
    log = log_of(job_id)
    try:
        assert res.returncode == 0, log[:3000] + "\n...\n" + log[-3000:]
        assert "2 nodes x 1" in log
        assert "rank 0/2" in log and "rank 1/2" in log, "each node must read its own SLURM_NODEID"
        assert "adapter saved to" in log
        m = json.loads((out / "adapter" / "manifest.json").read_text())
        assert m["launch"]["world_size"] == 2 and m["launch"]["num_processes"] == 2
        assert m["train"]["global_step"] == 4
        seen = json.loads((out / "rows_seen.json").read_text())
        assert not set(seen["0"]) & set(seen["1"])
    finally:
        (REPO / f"slurm-medsft-{job_id}.log").unlink(missing_ok=True)


def test_requeue_resumes(slurm, tmp_path, tiny_dir):
    out = tmp_path / "run"
    steps = 24
    res = submit(slurm, out, f"training.max_steps={steps}", "training.save_steps=4", wait=False)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]
    try:
        # requeue once a complete checkpoint exists and training is still going
        slurm.wait_for(lambda: (out / "checkpoint-4" / "trainer_state.json").is_file(), "checkpoint-4", timeout=600)
        assert slurm.run("scontrol", "requeue", job_id).returncode == 0
        slurm.wait_for(lambda: slurm.job_state(job_id).get("Restarts", "0") != "0", "the requeue", timeout=120)
        # Once the old run has ended (COMPLETING → PENDING), Slurm holds the requeued job back for two
        # minutes (Reason=BeginTime); release it then: an earlier update is overwritten by that hold
        slurm.wait_for(lambda: slurm.job_state(job_id).get("Reason") == "BeginTime"
                       or slurm.job_state(job_id).get("JobState") not in ("COMPLETING", "PENDING"),
                       "the requeued job to be pending", timeout=300)
        if slurm.job_state(job_id).get("Reason") == "BeginTime":
            assert slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now").returncode == 0
        slurm.wait_for(lambda: slurm.job_state(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                       "the requeued job to finish", timeout=900, interval=2)
        log = log_of(job_id)
        assert slurm.job_state(job_id)["JobState"] == "COMPLETED", log[-4000:]
        assert "restart 1" in log and "resuming from" in log, log[-4000:]
        m = json.loads((out / "adapter" / "manifest.json").read_text())
        assert m["train"]["global_step"] == steps  # the same final step as an uninterrupted run
        assert m["train"]["resumed_from"]
    finally:
        (REPO / f"slurm-medsft-{job_id}.log").unlink(missing_ok=True)

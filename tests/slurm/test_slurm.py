"""The project's own sbatch script on a real two-node Slurm cluster: a 2-node tiny-cpu run, and a
`scontrol requeue` mid-training that resumes from the checkpoint and ends on the same step."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

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
    """The job as a user submits it: `medsft slurm … --submit` (no GPUs on this cluster: MEDSFT_ALLOW_CPU=1)."""
    import sys

    args = [sys.executable, "-m", "medsft", "slurm", "recipes/tiny-cpu.yaml", "--config", "accelerate_configs/ddp.yaml",
            "--nodes", "2", "--gpus-per-node", "0", "--time", "30:00", "--submit", *(["--wait"] if wait else []),
            "--set", f"output.dir={out}", "--set", "training.eval_strategy=no"]
    for o in overrides:
        args += ["--set", o]
    slurm.env["MEDSFT_ALLOW_CPU"] = "1"
    res = slurm.run(*args, cwd=REPO, timeout=1200)
    match = re.search(r"submitted job (\d+)", res.stdout)
    assert match, res.stdout + res.stderr
    return res, match.group(1)


def log_of(job_id: str) -> str:
    return (REPO / f"slurm-medsft-{job_id}.log").read_text()


def test_two_node_job(slurm, tmp_path, tiny_dir):
    out = tmp_path / "run"
    res, job_id = submit(slurm, out, "training.max_steps=4")
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
    res, job_id = submit(slurm, out, f"training.max_steps={steps}", "training.save_steps=4", wait=False)
    assert res.returncode == 0, res.stderr
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


def test_a_job_without_gpus_is_refused_inside_its_allocation(slurm, tmp_path):
    """The job script as sbatch runs it, on a node of a real allocation that has no GPUs: one line naming
    --gpus-per-node, exit 2, before any worker starts (no output.dir)."""
    log = tmp_path / "job.log"
    env = {k: v for k, v in slurm.env.items() if k != "MEDSFT_ALLOW_CPU"}
    res = subprocess.run(["sbatch", "--wait", "--parsable", "--nodes=1", f"--output={log}", "launch/slurm_job.sh",
                          "recipes/tiny-cpu.yaml", "accelerate_configs/ddp.yaml", "--set", f"output.dir={tmp_path / 'run'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr + log.read_text()
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Slurm job") and "--gpus-per-node" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_the_dry_run_asks_slurm_and_a_refusal_is_one_line(slurm):
    """Without --submit: the script, and sbatch --test-only's answer from the real controller; a partition the
    cluster does not have is refused in one line before anything queues."""
    import sys

    args = [sys.executable, "-m", "medsft", "slurm", "recipes/tiny-cpu.yaml", "--config", "accelerate_configs/ddp.yaml",
            "--nodes", "2", "--gpus-per-node", "0"]
    slurm.env["MEDSFT_ALLOW_CPU"] = "1"
    res = slurm.run(*args, cwd=REPO)
    assert res.returncode == 0 and "#SBATCH --nodes=2" in res.stdout, res.stderr
    assert res.stderr.startswith("notice: sbatch --test-only: ") and "to start at" in res.stderr, res.stderr
    res = slurm.run(*args, "--partition", "nosuch", cwd=REPO)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sbatch refused the job") and "partition" in lines[0], lines

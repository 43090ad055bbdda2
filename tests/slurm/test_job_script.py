"""The Slurm job script and `medsft slurm` without a cluster: the no-GPU refusal reads Slurm's variables, the
script that `medsft slurm` renders asks for what the user stated and is valid bash, and nothing needs Slurm."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # a real Slurm cluster

SLURM_ONE_NODE_NO_GPU = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n1",
                         "SLURM_NODEID": "0"}


def job(tmp_path, **env) -> subprocess.CompletedProcess:
    """`bash launch/slurm_job.sh` with the variables of a one-node Slurm job that got no GPUs."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "MEDSFT_ALLOW_CPU"}
    path = os.path.dirname(sys.executable) + os.pathsep + base.get("PATH", "")
    return subprocess.run(["bash", "launch/slurm_job.sh", "recipes/tiny-cpu.yaml", "accelerate_configs/ddp.yaml",
                           "--set", f"output.dir={tmp_path / 'run'}", "--set", "training.max_steps=2",
                           "--set", "training.eval_strategy=no"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**base, **SLURM_ONE_NODE_NO_GPU, "PATH": path, "PYTHONPATH": str(REPO),
                               "OMP_NUM_THREADS": "1", **env})


def test_a_job_without_gpus_is_refused_before_any_worker(tmp_path):
    res = job(tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--gpus-per-node" in lines[0], lines
    assert "MEDSFT_ALLOW_CPU=1" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_job_without_gpus_trains_when_the_user_says_so(tmp_path, tiny_dir):
    res = job(tmp_path, MEDSFT_ALLOW_CPU="1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 nodes x 1" in res.stdout and "adapter saved to" in res.stdout + res.stderr
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_medsft_slurm_prints_the_job_without_slurm(tmp_path):
    """The issue's example, where no sbatch is installed: the script on stdout, exit 0, valid bash."""
    res = run_cli("slurm", "recipes/llama3.1-8b.yaml", "--config", "accelerate_configs/zero3.yaml", "--nodes", "2",
                  "--gpus-per-node", "8", "--partition", "gpu", "--account", "lab",
                  env={"PATH": os.path.dirname(sys.executable)})
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    script = res.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64",
                 "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=lab"):
        assert line in script.splitlines(), (line, script)
    assert "--num_processes 16" in script and "ZeRO-3 over 16 processes" in script
    assert "exec bash launch/slurm_job.sh recipes/llama3.1-8b.yaml accelerate_configs/zero3.yaml" in script
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0


@pytest.mark.parametrize("flags, words", [
    (["--gpus-per-node", "0"], ["--gpus-per-node 0", "MEDSFT_ALLOW_CPU=1"]),
    (["--time", "3h"], ["--time '3h'", "24:00:00"]),
    (["--time", "5"], ["--time 5", "requeue at once"]),  # the checkpoint signal comes 5 minutes before the limit
    (["--time", "1:30"], ["--time 1:30", "requeue at once"]),  # minutes:seconds
    (["--nodes", "0"], ["--nodes 0"]),
    (["--partition", "gpu;rm"], ["--partition"]),
    (["--wait"], ["--wait", "--submit"]),
    (["--set", "output.dir=/tmp/x\ntouch /tmp/pwned #"], ["control character"]),  # a line of its own in the script
    (["--config", "CPU_CONFIG"], ["trains on CPUs", "--gpus-per-node 0"]),  # a CPU config asking for 8 GPUs
])
def test_medsft_slurm_refuses_in_one_line(flags, words, tmp_path):
    config = tmp_path / "cpu.yaml"
    config.write_text("distributed_type: MULTI_CPU\nuse_cpu: True\nnum_processes: 2\n")
    flags = [str(config) if f == "CPU_CONFIG" else f for f in flags]
    res = run_cli("slurm", "recipes/tiny-cpu.yaml", "--config", "accelerate_configs/ddp.yaml", *flags,
                  env={"MEDSFT_ALLOW_CPU": ""})
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines


def test_a_cpu_accelerate_config_needs_no_gpus(tmp_path):
    config = tmp_path / "cpu.yaml"
    config.write_text("distributed_type: MULTI_CPU\nuse_cpu: True\nnum_processes: 2\n")
    res = run_cli("slurm", "recipes/tiny-cpu.yaml", "--config", config, "--gpus-per-node", "0",
                  env={"MEDSFT_ALLOW_CPU": "", "PATH": os.path.dirname(sys.executable)})
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --gpus-per-node" not in res.stdout and "#SBATCH --nodes=1" in res.stdout


def test_a_node_whose_allocated_gpus_are_hidden_says_so(tmp_path):
    """Slurm allocated 4 GPUs but CUDA sees none (CUDA_VISIBLE_DEVICES empty): the node refuses in one line."""
    res = job(tmp_path, SLURM_GPUS_ON_NODE="4", CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "allocated 4 GPUs but 0 are visible" in errors[0], res.stderr
    assert not (tmp_path / "run").exists()

"""`medsft slurm RECIPE --config CONFIG`: the job script for a Slurm training, printed (a dry run, checked by
`sbatch --test-only` where Slurm is installed) or submitted. medsft/launch/slurm.py renders it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from argparse import Namespace

# sbatch's words when it finds no controller (not configured here, or down): nothing was checked
UNREACHABLE = re.compile(r"configuration source|fetch_config|contact slurm controller|Connection refused|timed out",
                         re.IGNORECASE)


def run(args: Namespace) -> int:
    from medsft.console import notice, say
    from medsft.launch.detect import from_accelerate_config
    from medsft.launch.slurm import ALLOW_CPU, SlurmJob, checked, script, summary
    from medsft.recipe.files import load_recipe

    load_recipe(args.recipe, args.overrides)  # a bad recipe is refused here, not after the queue
    if not Path("launch/slurm_job.sh").is_file():
        raise MedsftError("launch/slurm_job.sh is not in this directory",
                          "run medsft slurm from the medsft repository root (the job runs launch/slurm_job.sh)")
    if args.wait and not args.submit:
        raise MedsftError("--wait waits for a submitted job", "add --submit, or leave out --wait")
    from medsft.launch.detect import read_accelerate_config

    config = read_accelerate_config(args.config)
    cpu_config = bool(config.get("use_cpu")) or str(config.get("distributed_type", "")).upper() == "MULTI_CPU"
    job = checked(SlurmJob(recipe=args.recipe, config=args.config, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                           cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time, partition=args.partition,
                           account=args.account, overrides=tuple(args.overrides),
                           allow_cpu=os.environ.get(ALLOW_CPU) == "1", directory=os.getcwd()), cpu_config)
    launch = from_accelerate_config(job.config, job.nodes * job.processes_per_node, cuda=job.gpus_per_node > 0)
    command = "medsft slurm " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["slurm"] else \
        "medsft slurm"
    text = script(job, summary(job, launch.describe()), command)
    sbatch = shutil.which("sbatch")
    if not args.submit:
        answer = None
        if sbatch:  # Slurm answers whether it could run it, and when, without queueing it
            res = sbatch_run(sbatch, text, "--test-only")
            answer = (res.stdout + res.stderr).strip()
            if res.returncode != 0 and UNREACHABLE.search(answer):
                answer = "no Slurm controller answered here, so the script was not checked"
            elif res.returncode != 0:
                raise refused(answer)  # nothing printed: `medsft slurm … > job.sbatch` leaves no refused script
        print(text, end="")
        if answer:
            notice(f"sbatch --test-only: {' '.join(answer.split())}")
        return 0
    if not sbatch:
        raise MedsftError("--submit: sbatch is not on PATH (Slurm's client tools are not installed here)",
                          "run it on the cluster's login node, or leave out --submit to print the script")
    res = sbatch_run(sbatch, text, "--parsable", *(["--wait"] if args.wait else []))
    job_id = res.stdout.strip().splitlines()[-1].split(";")[0] if res.stdout.strip() else ""
    if not job_id.isdigit():
        raise refused(res.stdout + res.stderr)
    say(f"submitted job {job_id}: log slurm-medsft-{job_id}.log in {job.directory}")
    if args.wait:
        say(f"job {job_id} ended with exit status {res.returncode}")
    return res.returncode if args.wait else 0


def sbatch_run(sbatch: str, text: str, *options: str) -> subprocess.CompletedProcess:
    """sbatch with the script on its standard input (--test-only answers on stderr; --wait returns when the job
    ends, with its status)."""
    try:
        return subprocess.run([sbatch, *options], input=text, capture_output=True, text=True,
                              timeout=None if "--wait" in options else 120)
    except subprocess.TimeoutExpired:
        raise refused("no answer from sbatch in 120 s (the Slurm controller timed out)") from None


def refused(answer: str) -> MedsftError:
    return MedsftError(f"sbatch refused the job: {' '.join(answer.split())[:300]}",
                       "fix the resources (--partition, --account, --time, --gpus-per-node) for this cluster")

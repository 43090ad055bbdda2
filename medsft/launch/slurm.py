"""A Slurm job for a training: its resources, what each node runs, and the job script that asks for them.

Why: a job that forgot its GPUs trains on the CPU for days, and the queue is the slowest place to find a
mistake. `medsft slurm` renders the script from what the user states (nodes, GPUs per node, time, partition,
account) and the accelerate config, so resources, processes per node and the medsft command are seen before
the job waits; launch/slurm_job.sh checks inside the allocation that the GPUs are there.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from medsft.errors import MedsftError

CPUS_PER_GPU = 8  # dataloader workers, tokenization and the launcher, per training process
WARNING_S = 300  # --signal=B:USR1@300: the job checkpoints and requeues this long before its time limit
ALLOW_CPU = "MEDSFT_ALLOW_CPU"  # the user's word that a job without GPUs is meant (launch/slurm_job.sh reads it)
TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+|infinite|unlimited", re.IGNORECASE)  # sbatch --time forms
NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class SlurmJob:
    recipe: str
    config: str
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int | None = None  # None: CPUS_PER_GPU per GPU (2 without GPUs)
    mem: str = "0"  # Slurm's "all of each node's memory"
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)
    allow_cpu: bool = False
    directory: str = "."  # where the job starts: the repository root (launch/ and the relative paths)

    @property
    def cpus(self) -> int:
        return self.cpus_per_task or (CPUS_PER_GPU * self.gpus_per_node if self.gpus_per_node else 2)

    @property
    def processes_per_node(self) -> int:
        return self.gpus_per_node or 1  # without GPUs (allowed on purpose): one CPU process per node


def time_limit_seconds(text: str) -> float:
    """sbatch's --time forms (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds; unlimited is infinite."""
    if text.lower() in ("infinite", "unlimited"):
        return float("inf")
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    minutes, seconds = (parts[0], 0) if len(parts) == 1 else (parts[0], parts[1]) if len(parts) == 2 else \
        (parts[0] * 60 + parts[1], parts[2])
    return minutes * 60 + seconds


def checked(job: SlurmJob, cpu_config: bool = False) -> SlurmJob:
    """The job's values, each refused in one line naming its flag. `cpu_config`: the accelerate config trains on
    CPUs (use_cpu, MULTI_CPU), which asks for no GPUs."""
    for what, value in (("the recipe path", job.recipe), ("--config", job.config),
                        *(("--set", o) for o in job.overrides)):
        if any(ord(c) < 32 or c == "\x7f" for c in value):
            raise MedsftError(f"{what} {value!r} holds a control character (a newline would end a line of the job "
                              "script)", "write it on one line")
    if cpu_config and job.gpus_per_node:
        raise MedsftError(f"{job.config} trains on CPUs (use_cpu / MULTI_CPU), but the job asks for "
                          f"{job.gpus_per_node} GPUs per node", "pass --gpus-per-node 0, or a GPU accelerate config")
    if job.nodes < 1:
        raise MedsftError(f"--nodes {job.nodes}: a job needs at least one node", "e.g. --nodes 2")
    if job.gpus_per_node < 0:
        raise MedsftError(f"--gpus-per-node {job.gpus_per_node} is negative", "e.g. --gpus-per-node 8")
    if job.gpus_per_node == 0 and not (job.allow_cpu or cpu_config):
        raise MedsftError("--gpus-per-node 0 trains on the nodes' CPUs, which takes days for a real model",
                          f"give the GPUs of each node (e.g. --gpus-per-node 8), or set {ALLOW_CPU}=1 to mean it")
    if job.cpus_per_task is not None and job.cpus_per_task < 1:
        raise MedsftError(f"--cpus-per-task {job.cpus_per_task}: at least 1", f"e.g. --cpus-per-task {CPUS_PER_GPU}")
    if not TIME.fullmatch(job.time):
        raise MedsftError(f"--time {job.time!r} is not a Slurm time limit",
                          "use HH:MM:SS, D-HH:MM:SS or minutes, e.g. --time 24:00:00 or --time 2-00:00:00")
    if time_limit_seconds(job.time) <= WARNING_S:
        raise MedsftError(f"--time {job.time} is {WARNING_S // 60} minutes or less: the job is told to checkpoint and "
                          f"requeue {WARNING_S // 60} minutes before its limit, so it would requeue at once, forever",
                          "give a longer limit, e.g. --time 4:00:00")
    if job.nodes > 100_000 or job.gpus_per_node > 1024 or (job.cpus_per_task or 0) > 100_000:
        raise MedsftError("--nodes, --gpus-per-node or --cpus-per-task is beyond any cluster",
                          "e.g. --nodes 2 --gpus-per-node 8")
    if not re.fullmatch(r"\d+[KMGT]?", job.mem, re.IGNORECASE):
        raise MedsftError(f"--mem {job.mem!r} is not a Slurm memory size", "e.g. --mem 256G, or --mem 0 for all of it")
    for flag, name in (("--partition", job.partition), ("--account", job.account)):
        if name is not None and not NAME.fullmatch(name):
            raise MedsftError(f"{flag} {name!r} is not a Slurm name", f"e.g. {flag} gpu")
    return job


def sbatch_options(job: SlurmJob) -> list[str]:
    """The resources, as `#SBATCH` lines take them (the same words work on sbatch's command line)."""
    options = [f"--job-name=medsft-{re.sub(r'[^A-Za-z0-9_.-]', '-', job.recipe.rsplit('/', 1)[-1].removesuffix('.yaml'))}",
               f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    if job.gpus_per_node:
        options.append(f"--gpus-per-node={job.gpus_per_node}")
    options += [f"--cpus-per-task={job.cpus}", f"--mem={job.mem}", f"--time={job.time}"]
    options += [f"--partition={job.partition}"] * bool(job.partition) + [f"--account={job.account}"] * bool(job.account)
    # requeue on preemption or the time limit: the signal comes 5 minutes ahead, medsft checkpoints and exits 75
    return options + ["--requeue", f"--signal=B:USR1@{WARNING_S}", "--open-mode=append", "--output=slurm-medsft-%j.log"]


def node_command(job: SlurmJob) -> str:
    """What launch/train_node.sh runs on each node (the node's rank and the head's address come from Slurm)."""
    words = ["python", "-m", "medsft", "launch", "--config_file", job.config, "--num_machines", str(job.nodes),
             "--machine_rank", "$SLURM_NODEID", "--num_processes", str(job.nodes * job.processes_per_node),
             "--main_process_ip", "$MASTER_ADDR", "--main_process_port", "$MASTER_PORT", "--rdzv_backend", "static",
             "train", job.recipe]
    for override in job.overrides:
        words += ["--set", override]
    return " ".join(w if w.startswith("$") else shlex.quote(w) for w in words)


def shipped_script(job: SlurmJob) -> str:
    return "launch/multi_node.sbatch" if job.nodes > 1 else "launch/single_node.sbatch"


def sbatch_line(job: SlurmJob) -> str:
    """The same job with the shipped sbatch file: its `#SBATCH` defaults overridden on the command line."""
    extra = [w for o in job.overrides for w in ("--set", o)]
    words = ["sbatch", *sbatch_options(job)[1:-4], shipped_script(job), job.recipe, job.config, *extra]
    return " ".join(shlex.quote(w) for w in words)


def script(job: SlurmJob, summary: str, command: str) -> str:
    """A job script to submit as it is (`sbatch FILE`, or on sbatch's standard input)."""
    lines = ["#!/usr/bin/env bash", f"# {command}", f"# {summary}"]
    if job.gpus_per_node:  # the shipped files ask for GPUs: no sbatch line of theirs asks for none
        lines.append(f"# the same with the shipped file: {sbatch_line(job)}")
    lines += [f"#SBATCH {option}" for option in sbatch_options(job)]
    lines += [f"# each node runs: {node_command(job)}", f"cd {shlex.quote(job.directory)}"]
    if not job.gpus_per_node:
        lines.append(f"export {ALLOW_CPU}=1  # no GPUs, on purpose")
    body = ["exec", "bash", "launch/slurm_job.sh", job.recipe, job.config, *[w for o in job.overrides
                                                                             for w in ("--set", o)]]
    lines.append(" ".join(shlex.quote(w) for w in body))
    return "\n".join(lines) + "\n"


def summary(job: SlurmJob, launch_description: str) -> str:
    per_node = f"{job.gpus_per_node} GPUs" if job.gpus_per_node else "no GPUs (1 CPU process)"
    memory = "all of its memory" if job.mem == "0" else f"{job.mem} of memory"
    return (f"{job.nodes} node{'s' * (job.nodes > 1)} × {per_node}: {launch_description}; each node "
            f"{job.cpus} CPUs and {memory}; time limit {job.time}")

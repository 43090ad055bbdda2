"""A real two-node Slurm cluster on this host: munged, slurmctld and `slurmd -N n1` / `slurmd -N n2`,
each slurmd on its own port with NodeAddr=127.0.0.1. Started and torn down by the `slurm` fixture."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port

CONF = """\
ClusterName=medsft-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=60
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=n1 NodeAddr=127.0.0.1 Port={n1_port} CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port={n2_port} CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        # jobs inherit this environment (sbatch --export=ALL): the test's python first on PATH, as an
        # activated venv would have it
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}
        self.procs: list[subprocess.Popen] = []
        self.munged = None

    def start(self) -> Cluster:
        (self.root / "state").mkdir(parents=True)
        for node in ("n1", "n2"):
            (self.root / "spool" / node).mkdir(parents=True)
        self.conf.write_text(CONF.format(root=self.root, ctld_port=free_port(), slurmd_port=free_port(),
                                         n1_port=free_port(), n2_port=free_port()))
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            self.munged = self.daemon("runuser", "-u", "munge", "--", "munged", "-F")
            self.wait_for(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, "munged")
        self.procs.append(self.daemon("slurmctld", "-D", "-i", "-f", str(self.conf)))
        self.wait_for(lambda: self.run("scontrol", "ping").returncode == 0
                      and "UP" in self.run("scontrol", "ping").stdout, "slurmctld")
        for node in ("n1", "n2"):
            self.procs.append(self.daemon("slurmd", "-D", "-N", node, "-f", str(self.conf)))
        self.wait_for(lambda: self.run("sinfo", "-h", "-o", "%T %D").stdout.split() == ["idle", "2"], "two idle nodes")
        return self

    def daemon(self, *cmd) -> subprocess.Popen:
        """A foreground daemon of ours, detached from the test's pipes (its output goes to its log file)."""
        return subprocess.Popen(list(cmd), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def run(self, *cmd, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 60)
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, **kw)

    def wait_for(self, predicate, what: str, timeout: float = 120, interval: float = 0.5):
        """Poll a condition (not a fixed sleep) until it holds or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        logs = "\n".join(p.read_text()[-2000:] for p in self.root.glob("*.log"))
        raise TimeoutError(f"{what} not ready after {timeout}s\n{logs}")

    def job_state(self, job_id: str) -> dict:
        out = self.run("scontrol", "show", "job", job_id, "-o").stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def stop(self) -> None:
        self.run("scancel", "--full", "-u", "root")
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.munged is not None:
            self.munged.terminate()
            self.munged.wait(timeout=30)

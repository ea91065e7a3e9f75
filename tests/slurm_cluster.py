"""A throw-away single-node SLURM cluster for tests: munged + slurmctld + slurmd on this host, as root.

Everything (munge key and socket, slurm.conf, state and spool folders, logs) lives under one temporary
folder and the daemons run in the foreground as our children, so nothing of the host's SLURM setup is
read or changed and ``stop()`` leaves nothing running. Needs Debian's ``slurm-wlm`` and ``munge``
(``apt-get install -y slurm-wlm munge``) and root (slurmd runs jobs as their submitting user).
Clients find the cluster through ``SLURM_CONF`` (see ``env``).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _find(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def unavailable_reason() -> Optional[str]:
    """Why a local cluster cannot be started here, or ``None`` when it can."""
    missing = [d for d in DAEMONS if _find(d) is None]
    if missing:
        return (f"SLURM/munge not installed (missing {', '.join(missing)}); as root: "
                "apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd starts jobs as their user); run the test as root"
    return None


def _die_with_parent() -> None:
    """Linux: SIGTERM the daemon when the test process dies, so a killed pytest leaves no cluster behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG = 1, SIGTERM = 15
    except (OSError, AttributeError):
        pass


def _free_ports(n: int) -> List[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalSlurm:
    """``with LocalSlurm(tmp) as cluster: subprocess.run(["sbatch", ...], env=cluster.env)``."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.procs: Dict[str, subprocess.Popen] = {}

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o711)  # clients need to reach the socket
        ctl_port, d_port = _free_ports(2)
        mem_mb = 512  # below any real machine's memory, so the node is never drained for "low RealMemory"
        self.conf.write_text(f"""\
ClusterName=crtest
SlurmctldHost={self.host}
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r / 'munge' / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MaxArraySize=1000
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def _start(self, name: str, cmd: List[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        self._write_config()
        m = self.root / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._start("munged", [_find("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={m / 'munge.socket'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait(lambda: (m / "munge.socket").exists(), 15, "munged did not create its socket")
        self._start("slurmctld", [_find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(self._ctld_up, timeout, "slurmctld did not answer `scontrol ping`")
        self._start("slurmd", [_find("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_idle, timeout, "the node did not become idle")
        return self

    def _run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=30, check=check)

    def _ctld_up(self) -> bool:
        return "UP" in self._run("scontrol", "ping").stdout

    def _node_idle(self) -> bool:
        state = self._run("sinfo", "-h", "-N", "-o", "%T").stdout.strip().lower()
        return state.startswith(("idle", "mix", "alloc"))

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited with {self.procs[dead[0]].returncode}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} within {timeout:g} s:\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if f.is_file():
                text = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (in that order) and wait for them."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._run("scancel", "--full", "--user=root")
                deadline = time.time() + 20
                while self._run("squeue", "-h").stdout.strip() and time.time() < deadline:
                    time.sleep(0.5)
            except (subprocess.SubprocessError, OSError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

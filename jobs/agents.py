"""Sweep agents by name: the one agent id rule, and agents run as local processes.

An agent's id is stable across restarts (a requeued Slurm task, a local agent started again), so a
restarted agent finds its unfinished trial in SWEEP/agents/<agent id>.json and resumes it. Agent
number i, a local agent or Slurm array task i, is `agent_id(i)`: agent-<i>.

With `--cluster local`, `launch-sweep` and `pipeline` start the agents as `python -m jobs agent`
processes, each in its own session, with its output in SWEEP/agents/<agent id>.log. A Slurm job
that runs several agents (`jobs.gpus`) starts them the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inat.devices import THREADS_ENV
from inat.errors import ConfigError
from inat.fsutil import read_json, short_lock, write_json
from inat.sweep import Sweep

from .gpus import job_cpus

AGENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def agent_id(index: int | str) -> str:
    """The id of agent `index`: a local agent's number, a Slurm array task id, or another stable name."""
    return f"agent-{index}"


def default_agent_id() -> str:
    """`agent --agent-id`'s default: the Slurm array task's agent, else the job's, else this process's."""
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        if os.environ.get(var):
            return agent_id(os.environ[var])
    return agent_id(f"{os.uname().nodename.split('.')[0]}-{os.getpid()}")


def check_agent_id(value: str) -> str:
    if not AGENT_ID.fullmatch(value):
        raise ConfigError(f"--agent-id {value!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return value


def log_name(agent: str) -> str:
    return f"{agent}.log"


def log_path(sweep: Sweep, agent: str) -> Path:
    """Where a local agent's output goes: SWEEP/agents/<agent id>.log."""
    return sweep.agents_dir / log_name(agent)


def logs_glob(sweep: Sweep) -> str:
    """SWEEP/agents/agent-*.log, to tell users where the local agents' logs are."""
    return str(log_path(sweep, agent_id("*")))


@dataclass
class LocalAgent:
    id: str
    proc: subprocess.Popen

    def exit_text(self) -> str:
        return f"{self.id} (exit {self.proc.returncode})"


def start_local(sweep: Sweep, n: int, count: int | None, first: int = 0) -> list[LocalAgent]:
    """Start agents first..first+n-1 of `sweep` as processes of this machine, each running up to
    `count` trials with its share of the CPUs (`jobs.gpus.job_cpus` / n threads); they are recorded
    in SWEEP/agents/local.json (`record_local`)."""
    threads = {THREADS_ENV: str(max(1, job_cpus() // n))}
    started = start_agents(sweep, [agent_id(i) for i in range(first, first + n)], [count] * n, [threads] * n)
    record_local(sweep, started)
    return started


def start_agents(sweep: Sweep, names: list[str], counts: list[int | None], envs: list[dict[str, str]],
                 gpus_per_trial: int = 1) -> list[LocalAgent]:
    """Start one `python -m jobs agent` process per name, each with its count and its environment
    on top of this one's, in its own session (Ctrl-C here does not reach it; `wait` passes it on)."""
    sweep.agents_dir.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])  # so `python -m jobs` works from a checkout too
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, base.get("PYTHONPATH")]))
    started = []
    for name, count, env in zip(names, counts, envs):
        cmd = [sys.executable, "-m", "jobs", "agent", "--sweep-id", sweep.id, "--out", str(sweep.scratch_root),
               "--agent-id", name]
        if count is not None:
            cmd += ["--count", str(count)]
        if gpus_per_trial > 1:
            cmd += ["--gpus-per-trial", str(gpus_per_trial)]
        with open(log_path(sweep, name), "ab") as logfile:
            started.append(LocalAgent(name, subprocess.Popen(
                cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**base, **env},
                start_new_session=True)))
    return started


def stop(agents: list[LocalAgent]) -> None:
    """SIGTERM every agent still running, with whatever it started (its session)."""
    for agent in agents:
        if agent.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.proc.pid, signal.SIGTERM)


def local_path(sweep: Sweep) -> Path:
    return sweep.agents_dir / "local.json"


def record_local(sweep: Sweep, started: list[LocalAgent]) -> None:
    """Add agents to SWEEP/agents/local.json, [{agent, pid, host, started}], the record by which
    `sweep-stop --now` finds the processes (each leads its own session: pgid = pid)."""
    host, now = os.uname().nodename, time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with short_lock(sweep.agents_dir / ".local.lock"):
        known = local_records(sweep)
        write_json(local_path(sweep), known + [{"agent": a.id, "pid": a.proc.pid, "host": host, "started": now}
                                               for a in started])


def local_records(sweep: Sweep) -> list[dict]:
    return read_json(local_path(sweep)) if local_path(sweep).is_file() else []


def wait(agents: list[LocalAgent], say: Callable[[str], None]) -> list[LocalAgent]:
    """Wait for every agent to exit; returns the ones that failed. Ctrl-C stops them too."""
    try:
        for agent in agents:
            agent.proc.wait()
    except KeyboardInterrupt:
        stop(agents)  # they run in their own sessions: Ctrl-C does not reach them by itself
        raise
    failed = [a for a in agents if a.proc.returncode != 0]
    say(f"agents finished: {len(agents) - len(failed)} ok, {len(failed)} failed")
    return failed

"""GPUs and CPUs inside one job: how many sweep agents it runs, which GPUs and threads each gets.

Three cluster-profile keys decide it (checked here, together, for every stage of a profile):
`gpus` (G, per node), `gpus_per_trial` (P) and `agents_per_gpu` (K).

- P > 1: each trial trains over P GPUs at once (tf.distribute, `inat.devices`); a job runs G/P agents.
- otherwise: each agent is pinned to one GPU, K to a GPU; a job runs G x K agents.
- no GPUs: one agent per job, as on a CPU partition.

`launch-sweep --agents N` means N agents in all, so the array has ceil(N / agents per job) tasks.
Each agent of a job is its own process (`python -m jobs agent`), with its GPUs in
CUDA_VISIBLE_DEVICES, GPU memory that grows as needed rather than all of it at start, and its share
of the job's CPUs in $INAT_THREADS. A job of one agent runs it in the job's own process.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from inat.devices import THREADS_ENV
from inat.errors import ConfigError


def agents_per_job(profile, stage: str = "agent") -> int:
    """Sweep agents one job of `profile` (a ClusterProfile, for one stage) runs; checks the keys."""
    gpus, per_trial, per_gpu = profile.gpus or 0, profile.gpus_per_trial, profile.agents_per_gpu
    where = profile.source if stage == "agent" else f"{profile.source} (stage {stage})"
    if per_trial > 1 and per_gpu > 1:
        raise ConfigError(f"{where}: gpus_per_trial {per_trial} and agents_per_gpu {per_gpu}: a trial "
                          "either spans GPUs or shares one; set only one of them above 1")
    if per_trial > 1 and (not gpus or gpus % per_trial):
        raise ConfigError(f"{where}: key 'gpus_per_trial' = {per_trial} needs 'gpus' (GPUs per node) to be "
                          f"a multiple of it, got gpus {profile.gpus}")
    if per_gpu > 1 and not gpus:
        raise ConfigError(f"{where}: key 'agents_per_gpu' = {per_gpu} needs 'gpus' (GPUs per node) >= 1")
    return max(1, gpus // per_trial * per_gpu)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as Slurm (or the user) lists them in CUDA_VISIBLE_DEVICES."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not raw or raw in ("-1", "NoDevFiles"):
        return []
    return [g.strip() for g in raw.split(",") if g.strip()]


def job_cpus() -> int:
    """CPUs this job was given: $SLURM_CPUS_PER_TASK, else the CPUs this process may run on."""
    raw = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class JobAgents:
    """The agents of one agent array of a sweep: `total` in all, `per_job` in each array task,
    numbered from `first` (`add-agents` continues after the sweep's existing agents)."""

    total: int
    per_job: int = 1
    agents_per_gpu: int = 1
    gpus_per_trial: int = 1
    first: int = 0

    @classmethod
    def for_profile(cls, total: int, profile, first: int = 0) -> "JobAgents":
        return cls(total, agents_per_job(profile), profile.agents_per_gpu, profile.gpus_per_trial, first)

    @property
    def tasks(self) -> int:
        return math.ceil(self.total / self.per_job)

    def indices(self, task: int) -> list[int]:
        """The agent numbers array task `task` runs (its agent ids: `jobs.agents.agent_id(i)`)."""
        start = self.first + task * self.per_job
        return list(range(start, min(start + self.per_job, self.first + self.total)))

    def environments(self, n: int, gpus: list[str] | None = None, cpus: int | None = None) -> list[dict[str, str]]:
        """The environment of each of `n` agents of one job: its GPUs, its memory and thread limits."""
        gpus = visible_gpus() if gpus is None else gpus
        threads = max(1, (job_cpus() if cpus is None else cpus) // max(n, 1))
        out = []
        for slot in range(n):
            env = {THREADS_ENV: str(threads)}
            if gpus:
                if self.gpus_per_trial > 1:
                    mine = gpus[slot * self.gpus_per_trial:(slot + 1) * self.gpus_per_trial]
                else:
                    mine = [gpus[(slot // self.agents_per_gpu) % len(gpus)]]
                env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
                # K processes on one GPU: none may take the whole memory at start (TensorFlow and
                # JAX both do by default).
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
                env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / self.agents_per_gpu:.2f}"
            out.append(env)
        return out


def check_visible(plan: JobAgents, n: int, gpus: list[str]) -> None:
    """A job that sees fewer GPUs than its agents were planned for fails, rather than run them all on
    the CPU or squeeze them onto the GPUs it has."""
    need = math.ceil(n / plan.agents_per_gpu) * plan.gpus_per_trial
    if len(gpus) < need:
        raise ConfigError(f"this job runs {n} agent(s) needing {need} GPU(s) but sees {len(gpus)} "
                          f"(CUDA_VISIBLE_DEVICES={','.join(gpus)}); check the profile's gpus")

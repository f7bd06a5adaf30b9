"""Slurm submission (submitit). Placeholder until the Slurm submission layer lands: it replaces this file."""

from __future__ import annotations

from pathlib import Path

from inat.errors import InatError


def submit_agents(sweep_dir: Path, n_agents: int, trials_per_agent: int | None, **options) -> list[str]:
    """Submit `n_agents` sweep agents as one Slurm array job; return the job id(s)."""
    raise InatError("Slurm submission is not available yet; use --cluster local")

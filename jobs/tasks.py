"""The functions Slurm jobs run. They live in the installed package so that a node can unpickle them.

Each takes typed values (RunConfig, paths) and calls the library; none of them knows whether it runs
under Slurm, in a local process, or in-process. Training work is `submitit.helpers.Checkpointable`:
on a time-out or preemption signal submitit calls `checkpoint()`, which resubmits the same call, and
Slurm requeues the job. Since `inat.train.train` resumes a run directory at its last finished epoch and
a sweep agent resumes its own unfinished trial (by agent id), re-calling is all a restart needs.

Deterministic names let later pipeline stages find the runs of earlier ones without talking to them:

    SCRATCH/runs/<sweep_id>-best<k>-seed<s>/   retrained config of rank k (1 = best), seed s
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from inat import layout
from inat.config import RunConfig
from inat.errors import InatError

from inat.rundir import RunDir
from inat.sweep import best_configs, load_sweep, wandb_backend
from inat.sweep.local import run_agent, train_trial, trials_ended_by

from . import agents
from .agents import agent_id
from .gpus import JobAgents, check_visible, visible_gpus

log = logging.getLogger("inat")


# ---- names -----------------------------------------------------------------------------------------


def retrain_plan(top_k: int, seeds: int) -> list[tuple[int, int]]:
    """Array index -> (rank 1..K, seed 0..S-1), ranks outer: index = (rank - 1) * S + seed."""
    return [(rank, seed) for rank in range(1, top_k + 1) for seed in range(seeds)]


def retrain_dirs(runs_root: Path, sweep_id: str, top_k: int, seeds: int) -> list[Path]:
    return [runs_root / layout.retrain_run_id(sweep_id, r, s) for r, s in retrain_plan(top_k, seeds)]


# ---- bookkeeping ---------------------------------------------------------------------------------------


def record_attempt(path: Path, outcome: str | None = None, run_dir: Path | None = None) -> None:
    """Append this start (or set the last start's outcome) in PATH, a JSON list of attempts.

    A requeued job keeps its job id; SLURM_RESTART_COUNT says which attempt this is. For a training
    run, `run_dir` gives the epochs already committed when the attempt started (null if its state
    file is unreadable: the attempt then fails, and says why, as its outcome).
    """
    records = RunDir(path.parent)  # a run directory, or an agent's folder: the same JSON record rules
    attempts = records.read(path.name, [])
    if outcome is None:
        attempts.append({
            "slurm_job_id": _slurm_job_id(),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "host": platform.node(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outcome": "running",
        })
        if run_dir is not None:
            attempts[-1]["epochs_done_at_start"] = _committed_epochs(run_dir)
    elif attempts:
        attempts[-1].update(outcome=outcome, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    records.write(path.name, attempts)


def _committed_epochs(run_dir: Path) -> int | None:
    try:
        return RunDir(run_dir).committed_epochs()
    except InatError:
        return None


def _slurm_job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


class _Recorded(Checkpointable):
    """A checkpointable task that notes each attempt and its end in `self._attempts` (JSON files:
    one, or one per agent of a job that runs several)."""

    _attempts: list[Path] = []

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # In a container the signal can come twice (srun and apptainer both forward it): log once.
        if self._attempts and not getattr(self, "_signalled", False):
            self._signalled = True
            for path in self._attempts:
                record_attempt(path, "signalled (time-out or preemption): requeued")
            log.warning("time-out or preemption signal: requeueing; the run resumes at its last "
                        "finished epoch")
        return super().checkpoint(*args, **kwargs)

    def _run(self, attempts: Path | list[Path], fn, *args, run_dir: Path | None = None):
        self._attempts = [attempts] if isinstance(attempts, Path) else list(attempts)
        self._signalled = False
        for path in self._attempts:
            record_attempt(path, run_dir=run_dir)
        try:
            result = fn(*args)
        except Exception as exc:
            for path in self._attempts:
                record_attempt(path, f"failed: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
            raise
        for path in self._attempts:
            record_attempt(path, "completed")
        return result


# ---- training ------------------------------------------------------------------------------------------


class TrainTask(_Recorded):
    """Train `cfg` into `run_dir` (resuming it). `epoch_delay_s` sleeps at the start of every epoch:
    a knob for tests that need a job to outlive its time limit; leave it 0."""

    def __call__(self, cfg: RunConfig, run_dir: Path, data_root: Path | None,
                 epoch_delay_s: float = 0.0, replicas: int = 1) -> dict:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return self._run(run_dir / "attempts.json", _train, cfg, run_dir, data_root, epoch_delay_s, replicas,
                         run_dir=run_dir)


class RetrainTask(_Recorded):
    """Pipeline retraining: array task `index` looks up its (config, seed) when it starts, because the
    sweep had not finished when the pipeline was submitted. Fewer finished trials than K: the extra
    tasks skip. A requeued task reuses the config already saved in its run directory."""

    def __call__(self, sweep_dir: Path, runs_root: Path, index: int, top_k: int, seeds: int,
                 epochs: int | None = None, replicas: int = 1) -> dict:
        sweep_dir = Path(sweep_dir)
        sweep = load_sweep(layout.root_of(sweep_dir), sweep_dir.name)
        rank, seed = retrain_plan(top_k, seeds)[index]
        run_dir = Path(runs_root) / layout.retrain_run_id(sweep.id, rank, seed)
        if (run_dir / "config.yaml").is_file():
            cfg = RunConfig.load(run_dir / "config.yaml")
        else:
            picked = pick_config(sweep_dir, rank, seed, epochs)
            if picked is None:
                log.warning("sweep %s has fewer than %d finished trials: nothing to retrain for rank %d",
                            sweep.id, rank, rank)
                return _skipped(run_dir, f"no finished trial of rank {rank}")
            ranked, cfg = picked
            write_origin(run_dir, sweep.id, ranked, rank, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        return self._run(run_dir / "attempts.json", _train, cfg, run_dir, Path(sweep.data_root), 0.0, replicas,
                         run_dir=run_dir)


def pick_config(sweep_dir: Path, rank: int, seed: int, epochs: int | None):
    """The sweep's rank-th best finished trial as (its `inat.sweep.Ranked`, the retraining config), or None."""
    best = best_configs(sweep_dir, rank)
    if len(best) < rank:
        return None
    picked = best[rank - 1]
    changes: dict[str, Any] = {"seed": seed}
    if epochs:
        changes["epochs"] = epochs
    return picked, picked.config.replace(**changes)


def write_origin(run_dir: Path, sweep_id: str, picked, rank: int, seed: int) -> None:
    """retrain.json: which trial a retraining run comes from, and the sweep's numbers for it."""
    RunDir(run_dir).write("retrain.json", {
        "sweep_id": sweep_id, "trial": picked.trial, "rank": rank, "seed": seed,
        "sweep_metric": picked.metric, "sweep_value": picked.value, "sweep_best_epoch": picked.epoch,
        "sweep_val_accuracy": picked.val_accuracy,
    })


def _train(cfg: RunConfig, run_dir: Path, data_root: Path | None, epoch_delay_s: float, replicas: int = 1) -> dict:
    from inat.train import train  # lazy: Keras and TensorFlow, for training jobs only

    callbacks = [_delay_callback(epoch_delay_s)] if epoch_delay_s > 0 else []
    # Train and retrain jobs always write SCRATCH/runs/<id>/ (layout.runs_dir): their cache is
    # SCRATCH/cache, shared with the sweep's agents, so retraining decodes nothing.
    cache_root = layout.cache_dir(layout.root_of(Path(run_dir).resolve()))
    result = train(cfg, run_dir, data_root, callbacks=callbacks, verbose=2, cache_root=cache_root, replicas=replicas)
    return {"run_dir": str(run_dir), "status": result.status, "epochs_done": result.epochs_done,
            "best_val_accuracy": result.best_val_accuracy}


def _delay_callback(seconds: float):
    import keras  # lazy: as for train

    class EpochDelay(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            time.sleep(seconds)

    return EpochDelay()


# ---- sweep agents -------------------------------------------------------------------------------------


class AgentTask(_Recorded):
    """Sweep agents: array task `index` runs the agents `plan` gives it (`jobs.gpus`; default one).
    A requeued agent keeps its id, so it resumes its unfinished trial and then runs only the trials
    its count has left."""

    def __call__(self, sweep_dir: Path, index: int, trials: int | None, plan: JobAgents | None = None) -> dict:
        sweep_dir = Path(sweep_dir)
        sweep = load_sweep(layout.root_of(sweep_dir), sweep_dir.name)
        plan = plan or JobAgents(total=index + 1)
        names = [agent_id(i) for i in plan.indices(index)]
        sweep.agents_dir.mkdir(parents=True, exist_ok=True)
        attempts = [sweep.agents_dir / f"{name}.attempts.json" for name in names]  # one file per agent
        if len(names) == 1:  # in this process: the job's GPUs (CUDA_VISIBLE_DEVICES) are all its own
            return self._run(attempts, _agent, sweep, names[0], trials, plan.gpus_per_trial)
        return self._run(attempts, self._agents, sweep, names, trials, plan)

    def _agents(self, sweep, names: list[str], trials: int | None, plan: JobAgents) -> dict:
        gpus = visible_gpus()
        check_visible(plan, len(names), gpus)
        counts = [None if trials is None else max(0, trials - trials_ended_by(sweep, n)) for n in names]
        todo = [(n, c, e) for n, c, e in zip(names, counts, plan.environments(len(names), gpus)) if c != 0]
        self._children = agents.start_agents(sweep, *map(list, zip(*todo)), plan.gpus_per_trial) if todo else []
        log.info("started %d agent(s): %s", len(self._children),
                 ", ".join(f"{a.id} (CUDA_VISIBLE_DEVICES={e.get('CUDA_VISIBLE_DEVICES', '')})"
                           for a, (_, _, e) in zip(self._children, todo)))  # fmt: skip
        failed = agents.wait(self._children, log.info)
        if failed:
            raise InatError(f"agent(s) {', '.join(a.exit_text() for a in failed)} failed; "
                            f"see {agents.logs_glob(sweep)}")
        return {"agents": [a.id for a in self._children], "backend": sweep.backend}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        agents.stop(getattr(self, "_children", []))  # each resumes its trial after the requeue
        return super().checkpoint(*args, **kwargs)


def _agent(sweep, name: str, trials: int | None, gpus_per_trial: int = 1) -> dict:
    if sweep.backend == "wandb":
        wandb_backend.run_agent(sweep, trials)
        return {"agent_id": name, "backend": "wandb"}
    left = trials
    if trials is not None:
        left = trials - trials_ended_by(sweep, name)
        if left <= 0:
            return {"agent_id": name, "trials": [], "stop_reason": "count reached before the requeue"}
    trial_fn = functools.partial(train_trial, replicas=gpus_per_trial) if gpus_per_trial > 1 else None
    return run_agent(sweep, name, left, trial_fn=trial_fn)


# ---- test and figures ----------------------------------------------------------------------------------


def evaluate_run(run_dir: Path, data_root: Path | None = None, batch_size: int | None = None,
             missing_ok: bool = False) -> dict:
    """`inat-jobs test` for one run. missing_ok: a pipeline run that retraining skipped is not an error."""
    if missing_ok and not Path(run_dir).exists():
        return _skipped(run_dir, NO_RUN)
    from inat.evaluate import evaluate  # lazy: Keras and TensorFlow

    metrics = evaluate(run_dir, data_root, batch_size)
    return {"run_dir": str(run_dir), "status": "completed", "accuracy": metrics["accuracy"],
            "n": metrics["n"]}


def visualize_run(run_dir: Path, what: list[str], data_root: Path | None = None, seed: int = 0,
                  max_images: int = 200, pdf: bool = True, missing_ok: bool = False) -> dict:
    """`inat-jobs visualize` for one run: RUN/figures/."""
    if missing_ok and not Path(run_dir).exists():
        return _skipped(run_dir, NO_RUN)
    from inat.figures.visualize import visualize  # lazy: Keras, TensorFlow, matplotlib

    paths = visualize(run_dir, what, data_root, seed=seed, max_images=max_images, pdf=pdf)
    return {"run_dir": str(run_dir), "status": "completed", "figures": [str(p) for p in paths]}


NO_RUN = "no such run (fewer finished trials than K)"


def _skipped(run_dir: Path, reason: str) -> dict:
    """A task with nothing to do: it ends COMPLETED for Slurm and shows as SKIPPED in local records."""
    return {"run_dir": str(run_dir), "status": "skipped", "reason": reason}


def sweep_report(sweep_dir: Path) -> dict:
    """SWEEP/trials.csv and the sweep plots (the pipeline's last stage, beside the run figures)."""
    from inat.figures.sweep_report import sweep_report as report  # lazy: matplotlib

    return {"sweep_dir": str(sweep_dir), "status": "completed", "files": [str(p) for p in report(sweep_dir)]}

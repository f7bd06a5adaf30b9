"""Many sweep agents on one Optuna journal, as separate processes, so its file lock is really contended.

The trial function is a fast stand-in (no TensorFlow): each call appends "start N" and "end N" to
its agent's own log, where N is the run directory the trial trains into (trials/N), so the test can
count what ran where, independently of the study. Then:

* 16 agents x 100 trials: exactly 1600 distinct trial numbers, each run exactly once, every trial
  COMPLETE in the study and attributed to the agent that logged it.
* agents SIGKILLed mid-trial: a requeued agent (same id) resumes its run, which then ran twice
  (the documented retry), as a new trial that supersedes the killed one; a trial whose agent never
  comes back is told FAIL by the next agent once its heartbeat is stale; the sweep finishes and every
  trial in the store is in a terminal state.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from conftest import STANDIN_SPEC, cli, make_sweep, standin_events, start_standin_agent, wait_standin_agents

SPEC = STANDIN_SPEC


def start_agent(sweep, agent_id: str, count: int, sleep_s: float = 0.0, stale_after: float = 600.0):
    return start_standin_agent(sweep, agent_id, count, sleep_s, stale_after, heartbeat_s=0.2)


events = standin_events
wait_all = wait_standin_agents


def study_trials(sweep):
    from inat.sweep.study import open_study

    return open_study(sweep, sweep.spec()).get_trials(deepcopy=False)


@pytest.mark.slow
def test_16_agents_x_100_trials_no_trial_lost_or_run_twice(tmp_path):
    from optuna.trial import TrialState

    agents, per_agent = 16, 100
    sweep = make_sweep(tmp_path, SPEC, {"epochs": 1})
    t0 = time.monotonic()
    procs = [start_agent(sweep, f"a{i:02d}", per_agent) for i in range(agents)]
    wait_all(procs, sweep, timeout=600)
    seconds = time.monotonic() - t0

    ev = events(sweep)
    starts = Counter(n for kind, n, _, _ in ev if kind == "start")
    ends = Counter(n for kind, n, _, _ in ev if kind == "end")
    total = agents * per_agent
    assert sorted(starts) == list(range(total)), "trial numbers are not exactly 0..N-1"
    assert set(starts.values()) == {1} and starts == ends, "a trial ran twice or did not finish"
    per_agent_runs = Counter(agent for kind, _, agent, _ in ev if kind == "start")
    assert set(per_agent_runs.values()) == {per_agent}

    trials = study_trials(sweep)
    assert len(trials) == total
    assert all(t.state == TrialState.COMPLETE for t in trials)
    ran_by = {n: agent for kind, n, agent, _ in ev if kind == "start"}
    assert all(t.user_attrs["agent"] == ran_by[t.number] for t in trials)
    assert all(t.value == pytest.approx(t.params["dropout"]) for t in trials)
    assert not (sweep.dir / "optuna.journal.lock").exists()
    journal = sweep.dir / "optuna.journal"
    print(f"\n{agents} agents x {per_agent} trials: {len(starts)} distinct trials, 0 lost, 0 run twice, "
          f"{seconds:.1f} s wall ({total / seconds:.1f} trials/s), journal {journal.stat().st_size / 1e6:.1f} MB, "
          f"{len(journal.read_text().splitlines())} records")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def mid_trial(sweep, agent_id: str, nth: int) -> bool:
    """The agent has started its nth trial and not finished it."""
    mine = [kind for kind, _, agent, _ in events(sweep) if agent == agent_id]
    return mine.count("start") == nth and mine.count("end") == nth - 1


@pytest.mark.slow
def test_agents_killed_mid_trial_requeued_and_lost(tmp_path):
    from optuna.trial import TrialState

    sweep = make_sweep(tmp_path, SPEC, {"epochs": 1})
    stale = 2.0
    workers = [start_agent(sweep, f"a{i}", 15, sleep_s=0.05) for i in range(4)]
    requeued = start_agent(sweep, "v-requeued", 5, sleep_s=1.0)
    lost = start_agent(sweep, "v-lost", 5, sleep_s=1.0)
    for victim, agent_id in ((requeued, "v-requeued"), (lost, "v-lost")):
        wait_for(lambda: mid_trial(sweep, agent_id, 2), 120, f"{agent_id} to be inside its 2nd trial")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    killed_at = {agent: max(n for kind, n, a, _ in events(sweep) if kind == "start" and a == agent)
                 for agent in ("v-requeued", "v-lost")}

    # Slurm requeues one victim under its own id; the other never comes back. The requeued agent
    # starts after the stale grace period, so it also declares the lost one's trial dead.
    time.sleep(stale + 1.0)
    back = start_agent(sweep, "v-requeued", 4, sleep_s=0.05, stale_after=stale)
    wait_all([*workers, back], sweep, timeout=300)

    ev = events(sweep)
    starts = Counter(n for kind, n, _, _ in ev if kind == "start")
    ends = Counter(n for kind, n, _, _ in ev if kind == "end")
    retried, dead = killed_at["v-requeued"], killed_at["v-lost"]
    assert starts[retried] == 2 and ends[retried] == 1, "the requeued agent resumes its own trial"
    assert len({pid for kind, n, _, pid in ev if kind == "start" and n == retried}) == 2
    assert starts[dead] == 1 and ends[dead] == 0
    assert all(c == 1 for n, c in starts.items() if n != retried), "no other trial ran twice"

    from inat.sweep.liveness import run_dir_of, superseded

    trials = {t.number: t for t in study_trials(sweep)}
    moved_on = superseded(trials.values())
    assert list(moved_on) == [retried], "only the requeued agent's killed trial was handed on"
    resumer = trials[moved_on[retried]]
    assert resumer.user_attrs["run_dir"] == f"{retried:04d}" and resumer.user_attrs["agent"] == "v-requeued"
    runs = sorted(int(run_dir_of(t)) for n, t in trials.items() if n not in moved_on)
    assert runs == sorted(starts), "every run the store has was run, and vice versa"
    assert trials[retried].state == TrialState.FAIL and "superseded" in trials[retried].user_attrs["error"]
    assert resumer.state == TrialState.COMPLETE
    assert trials[dead].state == TrialState.FAIL and "no heartbeat" in trials[dead].user_attrs["error"]
    others = [t for n, t in trials.items() if n not in (dead, retried)]
    assert all(t.state == TrialState.COMPLETE for t in others)
    run_json = json.loads((sweep.trials_dir / f"{dead:04d}" / "run.json").read_text())
    assert run_json["status"] == "failed" and "no heartbeat" in run_json["error"]

    # The store stays readable by the CLI too, and says the same.
    result = cli("sweep-status", sweep.id, "--out", str(sweep.scratch_root), "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["counts"]
    assert counts == {"finished": len(trials) - 2, "failed": 1, "superseded": 1}
    print(f"\nkilled mid-trial: trial {retried} (agent requeued: superseded by trial {resumer.number}, which "
          f"resumed its run: ran twice, COMPLETE), trial {dead} (agent gone: FAIL, "
          f"{trials[dead].user_attrs['error']!r}); {len(trials)} trials, all terminal; sweep-status counts {counts}")

"""The Optuna backend with a stand-in trial function (no TensorFlow): agents, pruning, run_cap, grids,
concurrent agents on one journal, dead trials and requeued agents."""

import multiprocessing
import os
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import LOCAL_SPEC as SPEC
from conftest import REPO, empty_dataset, fake_trial, make_sweep
from inat.config import RunConfig
from inat.fsutil import read_json, write_csv, write_json
from inat.sweep import best_configs, load_sweep, new_sweep, trial_name
from inat.sweep.local import Outcome, run_agent
from inat.sweep.status import trial_rows
from inat.sweep.study import create_study, open_study, storage_for

def test_agent_runs_trials_prunes_and_records_them(tmp_path):
    sweep = make_sweep(tmp_path)
    result = run_agent(sweep, "a0", count=8, trial_fn=fake_trial)
    assert result["trials"] == list(range(8))
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert [t.state for t in trials].count(TrialState.RUNNING) == 0
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "min_iter 1 with eta 2 prunes some of 8 trials"
    for t in pruned:
        info = read_json(sweep.trials_dir / trial_name(t.number) / "run.json")
        assert info["status"] == "pruned" and info["pruned_at_epoch"] < 6
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.params["dropout"] + 0.06)  # the best epoch's metric
    rows = trial_rows(sweep, sweep.spec())
    assert {r["state"] for r in rows} <= {"finished", "pruned"}
    assert all(isinstance(r["params"]["kernel_size"], list) for r in rows)  # decoded back from JSON


def test_best_configs_reads_finished_run_directories(tmp_path):
    sweep = make_sweep(tmp_path)
    run_agent(sweep, "a0", count=6, trial_fn=fake_trial)
    best = best_configs(sweep.dir, top_k=3)
    assert best and len(best) <= 3
    accs = [b.value for b in best]
    assert accs == sorted(accs, reverse=True)
    acc, cfg = best[0].value, best[0].config
    finished = [t for t in open_study(sweep, sweep.spec()).get_trials() if t.state == TrialState.COMPLETE]
    assert acc == pytest.approx(max(t.value for t in finished))
    assert isinstance(cfg, RunConfig) and cfg.epochs == 6
    assert load_sweep(sweep.scratch_root, sweep.id).fixed == {"epochs": 6}


def test_run_cap_is_a_global_cap(tmp_path):
    sweep = make_sweep(tmp_path, SPEC + "run_cap: 3\n")
    first = run_agent(sweep, "a0", count=2, trial_fn=fake_trial)
    second = run_agent(sweep, "a1", count=5, trial_fn=fake_trial)
    assert len(first["trials"]) + len(second["trials"]) == 3
    assert "run_cap" in second["stop_reason"]
    assert len(open_study(sweep, sweep.spec()).get_trials()) == 3


def test_grid_stops_when_exhausted(tmp_path):
    spec = ("method: grid\nmetric: {name: val_accuracy, goal: maximize}\nparameters:\n"
            "  kernel_size: {values: [[3,3,3,3,3], [5,5,5,5,5]]}\n  dropout: {values: [0.1, 0.2]}\n")
    sweep = make_sweep(tmp_path, spec)
    result = run_agent(sweep, "a0", count=None, trial_fn=fake_trial)
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert len(result["trials"]) == 4 and result["stop_reason"] == "grid exhausted"
    assert sorted((t.params["kernel_size"], t.params["dropout"]) for t in trials) == sorted(
        (k, d) for k in ("[3, 3, 3, 3, 3]", "[5, 5, 5, 5, 5]") for d in (0.1, 0.2))


def _agent_process(scratch, sweep_id, agent_id):
    run_agent(load_sweep(scratch, sweep_id), agent_id, count=5, trial_fn=fake_trial)


def test_concurrent_agents_share_one_journal(tmp_path):
    sweep = make_sweep(tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_agent_process, args=(sweep.scratch_root, sweep.id, f"a{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert sorted(t.number for t in trials) == list(range(15))  # none lost, none duplicated
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert {t.user_attrs["agent"] for t in trials} == {"a0", "a1", "a2"}
    assert sorted(p.name for p in sweep.trials_dir.iterdir()) == [trial_name(i) for i in range(15)]


def test_failed_trial_is_recorded_and_agent_moves_on(tmp_path):
    sweep = make_sweep(tmp_path)
    calls = []

    def sometimes_broken(tr):
        calls.append(tr.number)
        if tr.number == 0:
            raise RuntimeError("out of memory")
        return fake_trial(tr)

    run_agent(sweep, "a0", count=2, trial_fn=sometimes_broken)
    t0 = open_study(sweep, sweep.spec()).get_trials()[0]
    assert t0.state == TrialState.FAIL and t0.user_attrs["error"] == "out of memory"
    assert read_json(sweep.trials_dir / "0000" / "run.json")["status"] == "failed"
    assert calls == [0, 1]


def test_stale_running_trial_is_failed_by_next_agent_and_fail_stale(tmp_path):
    sweep = make_sweep(tmp_path)
    study = optuna.load_study(study_name=sweep.id, storage=storage_for(sweep))
    dead = study.ask()  # an agent took trial 0, then its node died
    beat = sweep.trials_dir / "0000" / "heartbeat"
    beat.parent.mkdir(parents=True)
    beat.touch()
    alive = study.ask()  # trial 1's agent is still beating
    (sweep.trials_dir / "0001").mkdir()
    (sweep.trials_dir / "0001" / "heartbeat").touch()
    old = time.time() - 3600
    os.utime(beat, (old, old))

    row = trial_rows(sweep, sweep.spec(), stale_after=600)[0]  # plain sweep-status: shows, changes nothing
    assert row["state"] == "running" and row["stale_s"] >= 3600 and row["error"] is None
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    assert trial_rows(sweep, sweep.spec(), stale_after=600, fail_stale=True)[0]["state"] == "failed"
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL and "no heartbeat" in trials[dead.number].user_attrs["error"]
    assert trials[dead.number].user_attrs["state"] == "failed"
    assert trials[alive.number].state == TrialState.RUNNING

    os.utime(sweep.trials_dir / "0001" / "heartbeat", (old, old))
    run_agent(sweep, "a2", count=1, trial_fn=fake_trial)  # the next agent cleans up at start
    trials = study.get_trials()
    assert trials[alive.number].state == TrialState.FAIL
    assert trials[2].state in (TrialState.COMPLETE, TrialState.PRUNED)


NO_PRUNING = SPEC.replace("early_terminate: {type: hyperband, min_iter: 1, eta: 2}\n", "")


def _killed_after(epochs):
    """A trial function that trains `epochs` epochs (history.csv as train() writes it), then dies."""

    def killed(tr):
        tr.run_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for epoch in range(1, epochs + 1):
            rows.append([epoch, 1.0, 0.5, 1.0, 0.1 * epoch, 0.01])
            write_csv(tr.run_dir / "history.csv", ["epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                                   "seconds"], rows)
            tr.report(epoch, 0.1 * epoch)
        raise KeyboardInterrupt  # stands in for SIGKILL / preemption: nothing is told to the study

    return killed


def test_requeued_agent_resumes_its_own_trial(tmp_path):
    """Requeued under its id, the agent's killed trial 0 is superseded by a new trial that trains into
    trials/0000 (so train() resumes it) and already holds the epochs done before the kill."""
    sweep = make_sweep(tmp_path, NO_PRUNING)
    with pytest.raises(KeyboardInterrupt):
        run_agent(sweep, "agent-7", count=3, trial_fn=_killed_after(2))
    state = read_json(sweep.agents_dir / "agent-7.json")
    assert state["trial"] == 0 and state["run_dir"] == "0000"
    old = time.time() - 3600  # it waited in the queue longer than the grace period: still its own
    os.utime(sweep.trials_dir / "0000" / "heartbeat", (old, old))
    seen = []

    def resumed(tr):
        mine = open_study(sweep, sweep.spec()).get_trials()[tr.number]
        seen.append((tr.number, tr.name, tr.run_dir.name, dict(mine.intermediate_values)))
        return fake_trial(tr)

    run_agent(sweep, "agent-7", count=2, trial_fn=resumed)
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert seen == [(1, "0000", "0000", {1: pytest.approx(0.1), 2: pytest.approx(0.2)}), (2, "0002", "0002", {})]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "superseded: agent agent-7 was requeued" in trials[0].user_attrs["error"]
    assert trials[0].user_attrs["state"] == "superseded"  # what the dashboard shows
    assert trials[1].user_attrs == {"run_dir": "0000", "resumes": 0, "agent": "agent-7", "state": "finished",
                                    "run_path": str(sweep.trials_dir / "0000"), "epochs": 6,
                                    "wandb_run": f"{sweep.id}-0000"}
    assert trials[1].params == trials[0].params
    assert read_json(sweep.agents_dir / "agent-7.json")["trial"] is None
    assert sorted(p.name for p in sweep.trials_dir.iterdir()) == ["0000", "0002"]  # no directory for trial 1
    assert read_json(sweep.trials_dir / "0000" / "run.json")["status"] == "completed"  # not marked failed

    rows = {r["number"]: r for r in trial_rows(sweep, sweep.spec())}
    assert (rows[0]["state"], rows[0]["superseded_by"], rows[0]["epochs_done"]) == ("superseded", 1, 2)
    assert (rows[1]["state"], rows[1]["resumes"], rows[1]["run_dir"], rows[1]["epochs_done"]) == (
        "finished", 0, "0000", 6)
    assert sorted(b.trial for b in best_configs(sweep.dir, top_k=10)) == ["0000", "0002"]  # each run once


def test_an_agent_started_again_under_its_id_does_not_redraw_its_earlier_configs(tmp_path):
    sweep = make_sweep(tmp_path, NO_PRUNING)
    run_agent(sweep, "agent-5", count=3, trial_fn=fake_trial)
    run_agent(sweep, "agent-5", count=3, trial_fn=fake_trial)  # e.g. requeued after its trials finished
    params = [t.params for t in open_study(sweep, sweep.spec()).get_trials()]
    assert len(params) == 6 and params[3:] != params[:3], params


def test_agent_requeued_twice_keeps_resuming_the_same_run(tmp_path):
    from inat.sweep.local import trials_ended_by

    sweep = make_sweep(tmp_path, NO_PRUNING)
    with pytest.raises(KeyboardInterrupt):
        run_agent(sweep, "agent-3", count=1, trial_fn=_killed_after(1))
    with pytest.raises(KeyboardInterrupt):  # requeued, killed again in the resumed run
        run_agent(sweep, "agent-3", count=1, trial_fn=_killed_after(3))
    assert trials_ended_by(sweep, "agent-3") == 0  # superseded trials are not finished work
    names = []
    run_agent(sweep, "agent-3", count=1, trial_fn=lambda tr: names.append(tr.name) or fake_trial(tr))
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert names == ["0000"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs.get("resumes") for t in trials] == [None, 0, 1]
    assert {t.user_attrs.get("run_dir", "0000") for t in trials} == {"0000"}
    assert trials_ended_by(sweep, "agent-3") == 1
    assert [r["state"] for r in trial_rows(sweep, sweep.spec())] == ["superseded", "superseded", "finished"]


def test_a_requeue_does_not_use_up_run_cap(tmp_path):
    """run_cap counts runs: the trial that resumes a killed one continues a run already counted."""
    sweep = make_sweep(tmp_path, NO_PRUNING + "run_cap: 3\n")
    with pytest.raises(KeyboardInterrupt):
        run_agent(sweep, "agent-1", count=5, trial_fn=_killed_after(1))
    result = run_agent(sweep, "agent-1", count=5, trial_fn=fake_trial)
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert result["trials"] == [1, 2, 3] and "run_cap 3 reached" in result["stop_reason"]
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert sorted(p.name for p in sweep.trials_dir.iterdir()) == ["0000", "0002", "0003"]  # 3 runs
    assert run_agent(sweep, "a2", count=2, trial_fn=fake_trial)["trials"] == []  # the cap holds for others


def test_a_killed_trial_handed_on_is_resumed_by_whichever_agent_asks(tmp_path):
    """The enqueued trial is in the study's queue: if another agent pops it first, that one resumes the run."""
    from inat.sweep.liveness import own_unfinished, requeue

    sweep = make_sweep(tmp_path, NO_PRUNING)
    with pytest.raises(KeyboardInterrupt):
        run_agent(sweep, "agent-5", count=1, trial_fn=_killed_after(2))
    storage = storage_for(sweep)
    study = open_study(sweep, sweep.spec(), "agent-5", storage)
    requeue(study, storage, own_unfinished(study, sweep.agents_dir / "agent-5.json"), "agent-5")
    requeue(study, storage, study.get_trials()[0], "agent-5")  # killed right after: no second enqueue
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    names = []
    run_agent(sweep, "other", count=1, trial_fn=lambda tr: names.append(tr.name) or fake_trial(tr))
    assert names == ["0000"]
    assert open_study(sweep, sweep.spec()).get_trials()[1].user_attrs["agent"] == "other"


def test_a_stale_resumed_trial_fails_its_run_directory(tmp_path):
    sweep = make_sweep(tmp_path, NO_PRUNING)
    with pytest.raises(KeyboardInterrupt):
        run_agent(sweep, "agent-2", count=1, trial_fn=_killed_after(1))
    with pytest.raises(KeyboardInterrupt):  # the resumed trial 1 is killed too, and never comes back
        run_agent(sweep, "agent-2", count=1, trial_fn=_killed_after(2))
    beat = sweep.trials_dir / "0000" / "heartbeat"
    old = time.time() - 3600
    os.utime(beat, (old, old))
    time.sleep(0.6)  # a resumed trial is judged by its start while the run's heartbeat is older
    run_agent(sweep, "b", count=1, stale_after=0.5, trial_fn=fake_trial)
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert trials[1].state == TrialState.FAIL and "no heartbeat" in trials[1].user_attrs["error"]
    assert read_json(sweep.trials_dir / "0000" / "run.json")["status"] == "failed"
    assert not (sweep.trials_dir / "0001").exists()


def test_no_private_optuna_api():
    """Private Optuna attributes change between releases; the sweep code uses only public API."""
    import re

    repo = REPO
    private = re.compile(r"\._trial_id\b|\._study_id\b|\._storage\b|\boptuna\.trial\.Trial\(|\btrial\.Trial\(")
    imports_trial = re.compile(r"from optuna\.trial import [^\n]*\bTrial\b")  # then Trial(...) is Optuna's
    found = []
    for path in sorted(p for folder in ("inat", "jobs") for p in (repo / folder).rglob("*.py")):
        text = path.read_text()
        bare = re.compile(r"(?<![\w.])Trial\(") if imports_trial.search(text) else None
        found += [f"{path.relative_to(repo)}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if private.search(line) or (bare and bare.search(line))]
    assert not found, found


def test_best_config_yaml_is_a_train_config(tmp_path):
    sweep = make_sweep(tmp_path)
    run_agent(sweep, "a0", count=3, trial_fn=fake_trial)
    cfg = best_configs(sweep.dir)[0].config
    path = tmp_path / "best.yaml"
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    assert isinstance(yaml.safe_load(path.read_text())["kernel_size"], list)


def test_rdb_storage_url_works_too(tmp_path):
    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(SPEC)
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", tmp_path / "data", {"epochs": 3},
                            storage=f"sqlite:///{tmp_path / 'study.db'}")
    create_study(sweep, spec)
    run_agent(load_sweep(sweep.scratch_root, sweep.id), "a0", count=2, trial_fn=fake_trial)
    assert not (sweep.dir / "optuna.journal").exists() and (tmp_path / "study.db").is_file()
    assert len(open_study(sweep, spec).get_trials()) == 2


def test_requeue_and_stale_trials_with_an_rdb_storage(tmp_path):
    """With a database, Optuna's heartbeat (recorded in the database, no heartbeat files) fails a dead
    agent's trial, and its run goes on in an enqueued trial that resumes it; a requeued agent still
    hands its own trial on. Attributes of other agents' trials go through the storage object we
    built (Optuna wraps an RDB in a cache of its own). tests/sweep/test_rdb.py does this on MariaDB."""
    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(NO_PRUNING)
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", tmp_path / "data", {"epochs": 3},
                            storage=f"sqlite:///{tmp_path / 'study.db'}")
    create_study(sweep, spec)
    with pytest.raises(KeyboardInterrupt):  # trial 0: its agent dies after 1 epoch and never comes back
        run_agent(sweep, "agent-1", count=1, trial_fn=_killed_after(1), heartbeat_s=1, stale_after=1)
    with pytest.raises(KeyboardInterrupt):  # trial 1: its agent dies too, and is requeued at once
        run_agent(sweep, "agent-2", count=1, trial_fn=_killed_after(2), heartbeat_s=1, stale_after=600)
    assert not list(sweep.trials_dir.glob("*/heartbeat"))
    run_agent(sweep, "agent-2", count=1, trial_fn=fake_trial, heartbeat_s=1, stale_after=600)
    time.sleep(2.5)  # past the grace period, by the database's clock (whole seconds in SQLite)
    names = []
    run_agent(sweep, "agent-3", count=1, stale_after=1, heartbeat_s=1,
              trial_fn=lambda tr: names.append(tr.name) or fake_trial(tr))
    trials = open_study(sweep, spec).get_trials()
    assert names == ["0000"], "the dead trial's run resumed in its own directory"
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[2].user_attrs["resumes"] == 1 and "superseded" in trials[1].user_attrs["error"]
    assert trials[3].user_attrs["resumes"] == 0 and trials[3].user_attrs["run_dir"] == "0000"
    assert "no heartbeat for 1 s (agent agent-1 killed?)" == trials[3].user_attrs["why"]
    rows = {r["number"]: r for r in trial_rows(sweep, spec)}
    assert rows[0]["state"] == "superseded" and rows[0]["superseded_by"] == 3 and "no heartbeat" in rows[0]["why"]


def test_trial_declared_dead_while_alive_stops_and_stays_failed(tmp_path):
    sweep = make_sweep(tmp_path)

    def declared_dead_midway(tr):
        tr.report(1, 0.1)
        other = optuna.load_study(study_name=sweep.id, storage=storage_for(sweep))  # another agent
        other.tell(tr.number, state=TrialState.FAIL)
        stop = tr.report(2, 0.2)
        return Outcome(0.2, 2, stop)

    run_agent(sweep, "a0", count=1, trial_fn=declared_dead_midway)
    t = open_study(sweep, sweep.spec()).get_trials()[0]
    assert t.state == TrialState.FAIL
    assert read_json(sweep.trials_dir / "0000" / "run.json")["status"] == "failed"

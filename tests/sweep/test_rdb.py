"""Sweeps on real database servers: MariaDB (`--storage mysql://...`, the server slurmdbd uses here)
and PostgreSQL (`--storage postgresql://...`, Debian's).

scripts/rdb/setup-test-db.sh (which .ci/run calls too) gives user inat_test databases named
inat_test_* on each; every test module creates its own database and drops it. The agents are
processes with a stand-in trial function (no TensorFlow), as in test_concurrent_agents.py, except
in the Slurm test, whose one trial trains a tiny model. What is shown:

* 16 agents x 25 trials: 400 distinct trials, each run once, all COMPLETE;
* an agent SIGKILLed mid-trial: Optuna's heartbeat (in the database, no heartbeat files) fails its
  trial, the run goes on in a new trial that resumes it, and the sweep finishes;
* a wrong password, an unreachable host or a missing driver: one error line, nothing created;
* the password is in no file but the 0600 secret: not in sweep.json, logs, sbatch scripts, submitit
  pickles, `collect` output or anything a command prints.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    CI_PROFILE, REPO, SLURM_TINY, STANDIN_SPEC, cli, one_error_line, require, run_cli, standin_events,
    start_standin_agent, wait_standin_agents,
)  # fmt: skip
from test_secrets import files_with

SPEC = STANDIN_SPEC


def database(server: str):
    """SERVER://inat_test:PASSWORD@127.0.0.1:PORT/inat_test_<random>, a database of the caller's own,
    dropped after it."""
    import sqlalchemy

    from inat.sweep import rdb

    setup = subprocess.run(["bash", str(REPO / "scripts" / "rdb" / "setup-test-db.sh"), server],
                           capture_output=True, text=True, timeout=300)
    require(setup.returncode == 0, f"needs a {server} server and root: {setup.stderr.strip()}")
    url = sqlalchemy.engine.make_url(rdb.resolve(setup.stdout.strip()))
    name = f"inat_test_{secrets.token_hex(6)}"
    admin = sqlalchemy.create_engine(url.set(database="postgres") if server == "postgres" else url,
                                     isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        # FORCE: this process's own studies still hold pooled connections to it
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if server == "postgres" else "")))
    admin.dispose()


@pytest.fixture(scope="module")
def mysql_url():
    yield from database("mysql")


@pytest.fixture(scope="module")
def postgres_url():
    yield from database("postgres")


@pytest.fixture(params=["mysql", "postgres"])
def db_url(request):
    return request.getfixturevalue(f"{request.param}_url")


def password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def launch(tmp_path: Path, url: str, agents: int, count: int):
    """What `launch-sweep --storage URL` does before it starts agents (jobs.launch.create_sweep)."""
    from jobs.launch import create_sweep

    for sub in ("train", "val"):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "s.yaml").write_text(SPEC)
    sweep, _ = create_sweep(tmp_path / "s.yaml", agents, count, "local", tmp_path / "data", tmp_path / "scratch",
                            ["epochs=1"], url, 0)
    return sweep


def start_agent(sweep, agent_id: str, count: int, sleep_s: float = 0.0, stale_after: float = 600.0):
    return start_standin_agent(sweep, agent_id, count, sleep_s, stale_after, heartbeat_s=1)


def events(sweep) -> list[tuple[str, int, str]]:
    return [event[:3] for event in standin_events(sweep)]


wait_all = wait_standin_agents


def study_trials(sweep):
    from inat.sweep.study import open_study

    return open_study(sweep, sweep.spec()).get_trials(deepcopy=False)


@pytest.mark.slow
@pytest.mark.xdist_group("cluster")
def test_16_agents_x_25_trials(tmp_path, db_url):
    from optuna.trial import TrialState

    agents, per_agent = 16, 25
    sweep = launch(tmp_path, db_url, agents, per_agent)
    t0 = time.monotonic()
    procs = [start_agent(sweep, f"a{i:02d}", per_agent) for i in range(agents)]
    wait_all(procs, sweep, timeout=600)
    seconds = time.monotonic() - t0

    ev = events(sweep)
    starts = Counter(n for kind, n, _ in ev if kind == "start")
    ends = Counter(n for kind, n, _ in ev if kind == "end")
    total = agents * per_agent
    assert sorted(starts) == list(range(total)), "trial numbers are not exactly 0..N-1"
    assert set(starts.values()) == {1} and starts == ends, "a trial ran twice or did not finish"
    assert set(Counter(agent for kind, _, agent in ev if kind == "start").values()) == {per_agent}
    trials = study_trials(sweep)
    assert len(trials) == total and all(t.state == TrialState.COMPLETE for t in trials)
    ran_by = {n: agent for kind, n, agent in ev if kind == "start"}
    assert all(t.user_attrs["agent"] == ran_by[t.number] for t in trials)
    assert not (sweep.dir / "optuna.journal").exists() and not list(sweep.trials_dir.glob("*/heartbeat"))
    assert password(db_url) not in (sweep.dir / "sweep.json").read_text()
    assert files_with(password(db_url), sweep.scratch_root) == [str(sweep.dir / "storage-url.secret")]
    print(f"\n{db_url.split(':')[0]}, {agents} agents x {per_agent} trials: {len(starts)} distinct trials, 0 lost, 0 run twice, "
          f"{seconds:.1f} s wall ({total / seconds:.1f} trials/s)")


@pytest.mark.slow
@pytest.mark.xdist_group("cluster")
def test_an_agent_killed_mid_trial_is_failed_by_optunas_heartbeat(tmp_path, db_url):
    from optuna.trial import TrialState

    from inat.sweep.liveness import superseded

    sweep = launch(tmp_path, db_url, 4, 20)
    grace = 2.0
    victim = start_agent(sweep, "victim", 5, sleep_s=60, stale_after=grace)
    deadline = time.monotonic() + 60
    while not any(a == "victim" for _, _, a in events(sweep)):
        assert time.monotonic() < deadline, "the victim never started a trial"
        time.sleep(0.05)
    time.sleep(1.5)  # it has recorded a heartbeat or two
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    (dead,) = [n for kind, n, a in events(sweep) if a == "victim"]
    workers = [start_agent(sweep, f"a{i}", 20, sleep_s=0.4, stale_after=grace) for i in range(3)]
    wait_all(workers, sweep, timeout=300)

    trials = {t.number: t for t in study_trials(sweep)}
    moved_on = superseded(trials.values())
    assert list(moved_on) == [dead], "the dead trial, and only it, was handed on"
    assert trials[dead].state == TrialState.FAIL
    resumer = trials[moved_on[dead]]
    assert resumer.state == TrialState.COMPLETE and resumer.user_attrs["run_dir"] == f"{dead:04d}"
    assert "no heartbeat for 2 s (agent victim killed?)" == resumer.user_attrs["why"]
    assert all(t.state.is_finished() for t in trials.values()), "the sweep finished: no trial left running"
    starts = Counter(n for kind, n, _ in events(sweep) if kind == "start")
    assert starts[dead] == 2 and all(c == 1 for n, c in starts.items() if n != dead)
    assert len(trials) == 1 + 3 * 20 and not list(sweep.trials_dir.glob("*/heartbeat"))

    status = cli("sweep-status", sweep.id, "--out", str(sweep.scratch_root), "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert counts == {"finished": 60, "superseded": 1}
    print(f"\n{db_url.split(':')[0]}: agent killed in trial {dead}; Optuna's heartbeat failed it (grace {grace:.0f} s), trial "
          f"{resumer.number} resumed its run; {len(trials)} trials, all finished or superseded; "
          f"workers done {time.monotonic() - killed_at:.1f} s after the kill")


@pytest.mark.parametrize("what", ["password", "port", "host", "driver", "postgres password"])
def test_a_bad_database_is_one_line_before_anything_is_created(tmp_path, request, demo_data, what):
    from sqlalchemy.engine import make_url

    good = make_url(request.getfixturevalue("postgres_url" if what.startswith("postgres") else "mysql_url"))
    wrong = f"wrong-{secrets.token_hex(8)}"
    url = {"password": good.set(password=wrong), "port": good.set(password=wrong, port=1),
           "host": good.set(password=wrong, host="db.invalid"),
           "driver": good.set(drivername="postgresql+pg8000", password=wrong),
           "postgres password": good.set(password=wrong)}[what]
    (tmp_path / "s.yaml").write_text(SPEC)
    scratch = tmp_path / "scratch"
    t0 = time.monotonic()
    result = cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "2", "--trials-per-agent", "1",
                 "--data", str(demo_data), "--out", str(scratch), "--cluster", "local",
                 "--storage", url.render_as_string(hide_password=False))
    seconds = time.monotonic() - t0
    scheme = "postgresql+pg8000" if what == "driver" else good.drivername
    line = one_error_line(result, f"--storage {scheme}://inat_test:***@")
    assert {"password": "Access denied", "port": "Can't connect", "host": "Can't connect",
            "driver": "no database driver 'pg8000'",
            "postgres password": "password authentication failed"}[what] in line
    assert wrong not in result.stdout + result.stderr
    assert not (scratch / "sweeps").exists() or not list((scratch / "sweeps").iterdir())
    assert not (scratch / "jobs").exists(), "nothing was submitted"
    assert seconds < 15
    print(f"\n{what}: {line} ({seconds:.2f} s)")


@pytest.mark.parametrize("url, shown", [
    ("mysql://u:pw-secret@h:notaport/db", "--storage mysql://u:***@h:notaport/db: not a database URL"),
    ("pw-secret", "--storage: not a database URL"),
    ("foo://u:pw-secret@h/db", "--storage foo://u:***@h/db: SQLAlchemy knows no database 'foo'"),
])
def test_a_url_that_does_not_parse_does_not_show_its_password(tmp_path, demo_data, url, shown):
    (tmp_path / "s.yaml").write_text(SPEC)
    result = cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "1", "--trials-per-agent", "1",
                 "--data", str(demo_data), "--out", str(tmp_path / "scratch"), "--cluster", "local", "--storage", url)
    one_error_line(result, shown)
    assert "pw-secret" not in result.stdout + result.stderr and not (tmp_path / "scratch" / "sweeps").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_the_password_stays_out_of_jobs_logs_and_collect(tmp_path, mysql_url, demo_data):
    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    secret = password(mysql_url)
    (tmp_path / "s.yaml").write_text(SPEC)
    scratch = tmp_path / "scratch"
    env = {"INAT_CLUSTER_PROFILE": str(CI_PROFILE), "WANDB_MODE": "disabled"}
    result = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "1", "--trials-per-agent", "1",
                     "--data", str(demo_data), "--out", str(scratch), *SLURM_TINY, "--set", "epochs=1",
                     "--storage", mysql_url, "--cluster", "slurm", "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    from jobs.slurm import jobstate

    rows = jobstate.wait_for([{"stage": "agent", "task_ids": out["job_ids"], "cluster": "slurm"}], poll_s=3,
                             timeout_s=300, say=lambda *_: None)
    assert [r["State"] for r in rows] == ["COMPLETED"], rows
    sweep_dir = Path(out["out"])
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["storage"].startswith("mysql+pymysql://inat_test:***@127.0.0.1:3306/inat_test_")
    secret_file = sweep_dir / "storage-url.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    status = cli("sweep-status", out["sweep_id"], "--out", str(scratch))
    assert status.returncode == 0 and "1 finished" in status.stdout, status.stdout + status.stderr
    collected = cli("collect", out["sweep_id"], "--out", str(scratch), "--dest", str(tmp_path / "results"))
    assert collected.returncode == 0, collected.stderr
    assert list((scratch / "jobs").rglob("*.sh")) and list((scratch / "jobs").rglob("*.pkl"))
    assert list((scratch / "jobs").rglob("*_log.out")), "the job's log is scanned too"
    printed = result.stdout + result.stderr + status.stdout + status.stderr + collected.stdout + collected.stderr
    assert secret not in printed
    assert files_with(secret, scratch, tmp_path / "results") == [str(secret_file)]
    print(f"\npassword in no file under scratch or the collected results but {secret_file.name} (mode 600)")

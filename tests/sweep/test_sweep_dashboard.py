"""The dashboard's side of the local backend: what the agents write into each trial for it, and the
read-only optuna-dashboard over a real socket (the browser test is tests/jobs/test_dashboard_cli.py)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from conftest import LOCAL_SPEC, empty_dataset, fake_trial, make_sweep
from inat.errors import InatError
from inat.rundir import RunDir
from inat.sweep import Sweep, new_sweep
from inat.sweep.dashboard import make_dashboard, tunnel_command
from inat.sweep.liveness import run_dir_of
from inat.sweep.local import run_agent
from inat.sweep.study import create_study, open_study

STATES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def test_every_trial_says_its_run_directory_epochs_state_and_wandb_run(tmp_path):
    sweep = make_sweep(tmp_path)  # hyperband with eta 2: some of the trials are pruned

    def sometimes_broken(tr):
        if tr.number == 2:
            raise RuntimeError("out of memory")
        return fake_trial(tr)

    run_agent(sweep, "a0", count=6, trial_fn=sometimes_broken)
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert {t.state for t in trials} >= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    for t in trials:
        name = run_dir_of(t)
        attrs = t.user_attrs
        assert attrs["agent"] == "a0" and attrs["state"] == STATES[t.state], (t.number, attrs)
        assert attrs["run_path"] == str(sweep.trials_dir / name) and attrs["wandb_run"] == f"{sweep.id}-{name}"
        if t.state != TrialState.FAIL:  # epochs as the run directory and the study count them
            assert attrs["epochs"] == len(RunDir(sweep.trials_dir / name).committed_history())
            assert attrs["epochs"] == max(t.intermediate_values)


def _request(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _sweep(tmp_path, storage: str) -> Sweep:
    if storage == "journal":
        return make_sweep(tmp_path)
    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(LOCAL_SPEC)
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", tmp_path / "data", {"epochs": 6},
                            storage=f"sqlite:///{tmp_path / 'study.db'}")
    # Another sweep's study first in the same database: the page the dashboard prints must be this sweep's.
    optuna.create_study(study_name="another-sweep", storage=sweep.storage)
    create_study(sweep, spec)
    return sweep


@pytest.fixture(params=["journal", "rdb"])
def served(tmp_path, request):
    sweep = _sweep(tmp_path, request.param)
    run_agent(sweep, "a0", count=2, trial_fn=fake_trial)
    board = make_dashboard(sweep, "127.0.0.1", 0)
    thread = threading.Thread(target=board.server.serve_forever, daemon=True)
    thread.start()
    yield sweep, board, f"http://127.0.0.1:{board.server.server_address[1]}"
    board.server.shutdown()
    board.server.server_close()


def test_the_dashboard_serves_the_study_and_refuses_every_write(served):
    sweep, board, base = served
    status, studies = _request(f"{base}/api/studies")
    names = {s["study_name"]: s["study_id"] for s in studies["study_summaries"]}
    assert status == 200 and sweep.id in names
    study_id = names[sweep.id]
    assert board.url.endswith(f"/dashboard/studies/{study_id}")
    status, detail = _request(f"{base}/api/studies/{study_id}")
    assert status == 200 and len(detail["trials"]) == 2
    trial_id = detail["trials"][0]["trial_id"]

    writes = [  # routes of optuna-dashboard that would change the sweep under its agents
        ("POST", "/api/studies", {"study_name": "intruder", "directions": ["maximize"]}),
        ("DELETE", f"/api/studies/{study_id}", None),
        ("POST", f"/api/studies/{study_id}/rename", {"study_name": "renamed"}),
        ("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {"state": "edited"}}),
        ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
        ("PUT", f"/api/studies/{study_id}/note", {"version": 1, "body": "hello"}),
    ]
    for method, path, body in writes:
        status, answer = _request(base + path, method, body)
        assert status == 405 and "read-only" in answer["reason"], (method, path, status, answer)
    assert _request(f"{base}/api/studies")[1] == studies  # nothing created, renamed or deleted
    trials = open_study(sweep, sweep.spec()).get_trials()
    assert len(trials) == 2 and trials[0].user_attrs["state"] != "edited"


def test_a_port_in_use_is_one_line(served):
    sweep, board, _ = served
    port = board.server.server_address[1]
    with pytest.raises(InatError, match=rf"^--port {port}: already in use on 127.0.0.1; pick another"):
        make_dashboard(sweep, "127.0.0.1", port)


def test_a_sweep_without_its_study_is_one_line_and_none_is_created(tmp_path):
    sweep = make_sweep(tmp_path)
    journal = sweep.dir / "optuna.journal"
    journal.unlink()
    with pytest.raises(InatError, match="no Optuna study: .*optuna.journal is missing"):
        make_dashboard(sweep, "127.0.0.1", 0)
    assert not journal.exists()


def test_the_tunnel_forwards_to_localhost_unless_bound_elsewhere():
    assert tunnel_command("127.0.0.1", 8080).startswith("ssh -N -L 8080:localhost:8080 ")
    assert tunnel_command("0.0.0.0", 9000).startswith("ssh -N -L 9000:localhost:9000 ")
    assert tunnel_command("10.1.2.3", 9000).startswith("ssh -N -L 9000:10.1.2.3:9000 ")


def test_a_database_that_cannot_be_read_is_one_line(tmp_path):
    sweep = _sweep(tmp_path, "rdb")
    sweep.storage = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'study.db'}"  # e.g. moved, or unmounted
    with pytest.raises(InatError, match=rf"^sweep {sweep.id}: cannot read its Optuna database \(.*unable to open"):
        make_dashboard(sweep, "127.0.0.1", 0)

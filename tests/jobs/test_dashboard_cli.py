"""`inat-jobs dashboard` as a user meets it: the real command serving a sweep that two agents are
running, loaded by a real browser (headless Chromium, Debian's `chromium`, installed in CI by
scripts/chromium/install.sh), and its one-line errors.

The agents are separate processes on one journal with a stand-in trial function (no TensorFlow):
two epochs per trial, and each agent's first trial waits at a gate file after its first epoch, so
the page is loaded while both trials are running, then again after the gate opened and the agents
finished, from the same server: the page follows the sweep live. The page is a React app; Chromium's
`--virtual-time-budget` lets it fetch the study and render before `--dump-dom` prints the DOM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, STANDIN_SPEC, cli, empty_dataset, one_error_line, require, start_cli

# One agent: argv = scratch root, sweep id, agent id, gate file. Two trials of two epochs.
WORKER = r"""
import sys, time
from pathlib import Path
from inat.sweep import load_sweep
from inat.sweep.local import Outcome, run_agent

scratch, sweep_id, agent_id, gate = sys.argv[1:5]

def trial(tr):
    tr.report(1, tr.config.dropout)
    deadline = time.monotonic() + 120
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    tr.report(2, tr.config.dropout + 0.01)
    return Outcome(tr.config.dropout + 0.01, 2, False)

run_agent(load_sweep(scratch, sweep_id), agent_id, 2, trial_fn=trial, heartbeat_s=0.5)
"""


def make_sweep(tmp_path: Path):
    from inat.sweep import new_sweep
    from inat.sweep.study import create_study

    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(STANDIN_SPEC)
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", tmp_path / "data", {"epochs": 2})
    create_study(sweep, spec)
    return sweep


def study_trials(sweep):
    from inat.sweep.study import open_study

    return open_study(sweep, sweep.spec()).get_trials(deepcopy=False)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout} s")


def browse(url: str, out: Path, *mode: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `url` (`--dump-dom` or `--screenshot=FILE`), its profile under `out`."""
    chromium = shutil.which("chromium")
    require(chromium is not None, "chromium is not installed (scripts/chromium/install.sh)")
    cmd = [chromium, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={out / 'chromium-profile'}", "--window-size=1400,1000",
           "--virtual-time-budget=15000", *mode, url]
    if os.geteuid() == 0:  # Chromium refuses to run as root inside its sandbox
        cmd.insert(1, "--no-sandbox")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_lines(proc: subprocess.Popen, n: int, timeout: float) -> list[str]:
    """The first `n` lines the process prints, or a failure after `timeout` seconds."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout.readline() for _ in range(n)), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        pytest.fail(f"the dashboard printed {lines} in {timeout} s; stderr: {proc.stderr.read()[-2000:]}")
    return [line.rstrip("\n") for line in lines]


def trial_list(dom: str) -> dict[int, str]:
    """{trial number: state} from the trials page's list: each entry reads "Trial N" then its state."""
    return {int(n): state for n, state in re.findall(r">Trial (\d+)<.*?>(Running|Complete|Pruned|Fail)<", dom)}


def shown_attrs(dom: str) -> dict[str, str]:
    """The user attributes of the trial the trials page shows (the first), one "key value" line each."""
    return dict(re.findall(r">(agent|run_path|state|wandb_run|epochs) ([^<]*)</p>", dom))


@pytest.mark.slow
def test_a_browser_follows_a_running_two_agent_sweep(tmp_path):
    sweep = make_sweep(tmp_path)
    gate = tmp_path / "gate"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agents = [subprocess.Popen([sys.executable, "-c", WORKER, str(sweep.scratch_root), sweep.id, f"a{i}", str(gate)],
                               env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"a{i}.err", "wb"))
              for i in range(2)]
    board = start_cli("dashboard", sweep.id, "--port", "0", "--out", str(sweep.scratch_root))
    try:
        first, tunnel, _ = read_lines(board, 3, 60)
        url = re.search(r"read-only, live\): (http://127\.0\.0\.1:(\d+)/dashboard/studies/\d+)$", first)
        assert url, first
        url, port = url.groups()
        assert re.match(rf"from a laptop: ssh -N -L {port}:localhost:{port} \S+@\S+ +then open "
                        rf"http://localhost:{port}/dashboard/studies/\d+$", tunnel), tunnel
        wait_for(lambda: [t.user_attrs.get("epochs") for t in study_trials(sweep)] == [1, 1], 90,
                 "both agents in their first trial")

        dom = browse(url + "/trials", tmp_path, "--dump-dom").stdout
        (tmp_path / "running.html").write_text(dom)
        assert trial_list(dom) == {0: "Running", 1: "Running"}, (tmp_path / "running.html")
        want = {"run_path": str(sweep.trials_dir / "0000"), "wandb_run": f"{sweep.id}-0000"}
        assert shown_attrs(dom) == {**want, "agent": shown_attrs(dom).get("agent"), "epochs": "1"}  # state: at the end
        assert shown_attrs(dom)["agent"] in ("a0", "a1")
        browse(url + "/trials", tmp_path, f"--screenshot={tmp_path / 'running.png'}")

        gate.touch()
        for agent in agents:
            assert agent.wait(90) == 0, (tmp_path / "a0.err").read_text()[-2000:]
        # optuna-dashboard serves a study's trials from a cache for 2 s (its _storage.get_trials, under
        # 100 trials); the agents can finish inside that, and the page would show the running ones.
        time.sleep(2.5)
        dom = browse(url + "/trials", tmp_path, "--dump-dom").stdout
        (tmp_path / "finished.html").write_text(dom)
        assert trial_list(dom) == {n: "Complete" for n in range(4)}
        assert shown_attrs(dom) == {**want, "agent": shown_attrs(dom)["agent"], "state": "finished", "epochs": "2"}
        browse(url, tmp_path, f"--screenshot={tmp_path / 'finished.png'}")  # the page it printed: plots
        for shot in ("running.png", "finished.png"):
            assert (tmp_path / shot).stat().st_size > 10_000, shot  # a rendered page, not a blank one

        board.send_signal(signal.SIGINT)  # Ctrl-C: the normal way to stop it
        out, err = board.communicate(timeout=30)
        assert board.returncode == 0 and "dashboard stopped" in out, err
    finally:
        for proc in (*agents, board):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_port_in_use_is_one_line_error(tmp_path):
    sweep = make_sweep(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("dashboard", sweep.id, "--port", str(port), "--out", str(sweep.scratch_root))
    assert result.returncode == 2
    assert f"--port {port}: already in use on 127.0.0.1" in one_error_line(result, "already in use")


def test_an_unknown_sweep_is_one_line_error(tmp_path):
    sweep = make_sweep(tmp_path)
    result = cli("dashboard", "20990101-000000-beef", "--out", str(sweep.scratch_root))
    assert result.returncode == 2
    assert sweep.id in one_error_line(result, "sweep '20990101-000000-beef' not found")  # the latest one, as a hint
    result = cli("dashboard", "../etc", "--out", str(sweep.scratch_root))
    assert result.returncode == 2 and "sweep id" in one_error_line(result, "../etc")


@pytest.mark.parametrize("entity, env, page", [
    ("birds-team", {}, "http://wandb.example:8080/birds-team/inat/sweeps/abc123"),
    ("", {"WANDB_ENTITY": "alice"}, "http://wandb.example:8080/alice/inat/sweeps/abc123"),
    ("", {}, "http://wandb.example:8080/ENTITY/inat/sweeps/abc123"),
])
def test_a_wandb_sweep_points_at_its_page_on_wandb(tmp_path, monkeypatch, entity, env, page):
    from inat.sweep import new_sweep

    empty_dataset(tmp_path)
    (tmp_path / "s.yaml").write_text(STANDIN_SPEC)
    sweep, _ = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "wandb", tmp_path / "data", {})
    sweep.wandb_sweep = f"{entity}/inat/abc123"  # as wandb_backend.create records it
    sweep.save()
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    result = cli("dashboard", sweep.id, "--out", str(sweep.scratch_root),
                 env={"WANDB_BASE_URL": "http://wandb.example:8080", **env})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sweep {sweep.id} runs on W&B, whose sweep page is its dashboard: {page}\n"


def test_help_has_an_example():
    result = cli("dashboard", "--help")
    assert result.returncode == 0, result.stderr
    assert "inat-jobs dashboard 20261202-014057-a1b2 --port 8080" in result.stdout
    assert "ssh -N -L 8080:localhost:8080" in result.stdout
    assert "dashboard" in cli("--help").stdout

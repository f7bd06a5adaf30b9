"""Offline W&B runs reach W&B while they train: the signals training leaves for wandb-osh, and the
syncer that uploads what they name (inat/wandb_sync.py, `inat-jobs sync`).

No W&B server is reachable here: the syncing side runs a recording stand-in for the `wandb`
executable, found first on PATH, which logs each call (argv, cwd) and fails on demand."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import keras
import pytest

from conftest import cli, make_sweep, one_error_line
from inat import layout, tracking, wandb_sync
from inat.train import train

pytest.importorskip("wandb_osh", reason="needs the sync extra: pip install -e '.[sync]'")
from wandb_osh.syncer import WandbSyncer  # noqa: E402
from wandb_osh.util.hash_id import hash_id  # noqa: E402
from wandb_osh.util.log import set_log_level  # noqa: E402

STAND_IN = f"""#!{sys.executable}
# A stand-in for `wandb`: records each call; fails while FAIL_FILE holds a count > 0.
import json, os, sys, time
with open(os.environ["WANDB_RECORD"], "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
fail = os.environ["WANDB_FAIL"]
count = int(open(fail).read() or 0) if os.path.exists(fail) else 0
if count > 0:
    open(fail, "w").write(str(count - 1))
    mode = os.environ.get("WANDB_FAIL_MODE", "exit")
    if mode == "hang":
        time.sleep(30)
    if mode == "auth":
        print("Not authenticated.", file=sys.stderr)
        sys.exit(0)
    print("wandb: ERROR Network error (ConnectionError), entering retry loop.", file=sys.stderr)
    sys.exit(1)
again = os.environ.get("WANDB_SIGNAL_AGAIN")  # the training job signals once more during this sync
if again:
    name, target = again.split("=", 1)
    open(name, "w").write(target)
print("Syncing 1 run(s)")
"""


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    """`wandb` on PATH is the stand-in; returns (record file, fail file, calls())."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "wandb"
    exe.write_text(STAND_IN)
    exe.chmod(0o755)
    record, fail = tmp_path / "wandb-calls.jsonl", tmp_path / "wandb-fail"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_RECORD", str(record))
    monkeypatch.setenv("WANDB_FAIL", str(fail))

    def calls():
        return [json.loads(ln) for ln in record.read_text().splitlines()] if record.exists() else []

    return record, fail, calls


def offline_dir(run_dir: Path) -> Path:
    found = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(found) == 1, found
    return found[0].resolve()


def planted_run(run_dir: Path, name: str = "offline-run-20261202_010000-abc") -> Path:
    """A run directory with an offline W&B run folder, as the syncer sees one."""
    path = run_dir / "wandb" / name
    path.mkdir(parents=True)
    (path / f"run-{name.rsplit('-', 1)[-1]}.wandb").write_bytes(b"W&B")
    return path.resolve()


# ---- the training side -----------------------------------------------------------------------------


def test_training_signals_after_each_epoch_where_wandb_osh_looks(tmp_path, demo_data, tiny_cfg, monkeypatch,
                                                                 caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    scratch = tmp_path / "scratch"
    commands = layout.sync_dir(scratch)
    seen = []

    class Syncer(keras.callbacks.Callback):
        """Plays the syncer between epochs: what is signalled so far, then taken away."""

        def on_epoch_begin(self, epoch, logs=None):
            found = sorted(commands.glob("*.command")) if commands.is_dir() else []
            seen.append([(p.name, p.read_text()) for p in found])
            for p in found:
                p.unlink()

    run_dir = scratch / "runs" / "r"
    result = train(tiny_cfg, run_dir, demo_data, callbacks=[Syncer()], verbose=0)
    assert result.epochs_done == 2
    offline = offline_dir(run_dir)
    signal = (hash_id(str(offline)) + ".command", str(offline))  # wandb-osh's own name and content
    assert seen == [[], [signal]]  # nothing before epoch 1; epoch 1's signal before epoch 2
    assert [(p.name, p.read_text()) for p in commands.glob("*.command")] == [signal]  # epoch 2 and the end

    # wandb-osh's own syncer picks the file up and would sync that directory (it only pretends under pytest).
    set_log_level("DEBUG")
    try:
        with caplog.at_level(logging.DEBUG, logger="wandb_osh"):
            WandbSyncer(commands).loop()
    finally:
        set_log_level()
    assert f"Command would be: wandb sync . in {offline}" in caplog.text


def test_a_run_signals_at_its_end_too_and_only_when_offline_in_the_layout(tmp_path, monkeypatch):
    """The last signal follows run.finish(), when the offline run is complete on disk; W&B disabled,
    or a run directory outside SCRATCH/runs/ and SCRATCH/sweeps/*/trials/, signal nothing."""
    scratch = tmp_path / "scratch"
    for run in ("runs/off", "sweeps/S/trials/0000", "elsewhere/x"):
        (scratch / run if run != "elsewhere/x" else tmp_path / run).mkdir(parents=True)
    assert tracking.start(scratch / "runs" / "off", {}, "off").sync is None  # conftest: WANDB_MODE=disabled
    monkeypatch.setenv("WANDB_MODE", "offline")
    outside = tracking.start(tmp_path / "elsewhere" / "x", {}, "x")
    assert outside.sync is None and outside.sync_callbacks() == []
    outside.finish()
    trial = scratch / "sweeps" / "S" / "trials" / "0000"
    tracker = tracking.start(trial, {}, "S-0000")
    assert len(tracker.sync_callbacks()) == 1
    tracker.log({"epoch": 1, "val_accuracy": 0.5})
    tracker.finish()
    target = offline_dir(trial)
    assert (layout.sync_dir(scratch) / (hash_id(str(target)) + ".command")).read_text() == str(target)
    assert not (tmp_path / "elsewhere" / "wandb-osh").exists() and not (tmp_path / "wandb-osh").exists()


def test_a_broken_command_dir_costs_one_warning_not_the_run(tmp_path, demo_data, tiny_cfg, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    layout.sync_dir(scratch).write_text("a file where the command directory should be")
    run_dir = scratch / "runs" / "r"
    with caplog.at_level(logging.WARNING):
        result = train(tiny_cfg, run_dir, demo_data, verbose=0)
    assert (result.status, result.epochs_done) == ("completed", 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "W&B" in r.getMessage()]
    assert len(warnings) == 1, warnings  # three signals failed: after each epoch and at the end
    assert "no live sync for this run" in warnings[0] and f"wandb sync {offline_dir(run_dir)}" in warnings[0]


# ---- the syncing side --------------------------------------------------------------------------------


def signal(scratch: Path, target: Path) -> Path:
    assert wandb_sync.Signal(target, layout.sync_dir(scratch))()
    return layout.sync_dir(scratch) / (hash_id(str(target)) + ".command")


def test_sync_runs_wandb_sync_on_exactly_the_signalled_offline_dirs(tmp_path, fake_wandb):
    _, _, calls = fake_wandb
    scratch = tmp_path / "scratch"
    a = planted_run(scratch / "runs" / "a")
    b = planted_run(scratch / "sweeps" / "S" / "trials" / "0001", "offline-run-20261202_010100-def")
    planted_run(scratch / "runs" / "not-signalled", "offline-run-20261202_010200-ghi")
    signal(scratch, a)
    signal(scratch, b)
    gone = signal(scratch, planted_run(scratch / "runs" / "deleted", "offline-run-20261202_010300-jkl"))
    (scratch / "runs" / "deleted" / "wandb").rename(scratch / "runs" / "deleted" / "moved")

    result = cli("sync", "--once", "--out", str(scratch))
    assert result.returncode == 0, result.stderr
    assert sorted(c["argv"] for c in calls()) == sorted([["sync", "--include-synced", str(a)],
                                                         ["sync", "--include-synced", str(b)]])
    assert "synced 2 run(s), 0 failed" in result.stderr
    assert f"{gone.name} names" in result.stderr and "no longer exists; dropped" in result.stderr
    assert not list(layout.sync_dir(scratch).iterdir())  # every signal taken

    assert cli("sync", "--once", "--out", str(scratch)).returncode == 0
    assert len(calls()) == 2  # nothing new signalled: nothing synced again


@pytest.mark.parametrize("mode", ["exit", "hang", "auth"])
def test_a_failed_sync_is_retried(tmp_path, fake_wandb, monkeypatch, mode):
    _, fail, calls = fake_wandb
    monkeypatch.setenv("WANDB_FAIL_MODE", mode)
    fail.write_text("1")
    scratch = tmp_path / "scratch"
    target = planted_run(scratch / "runs" / "a")
    command = signal(scratch, target)

    syncer = wandb_sync.Syncer(layout.sync_dir(scratch), timeout=1, retry_s=0.5)
    first = syncer.run_pass()
    assert first.failed == [target] and command.read_text() == str(target)  # signalled again
    assert syncer.run_pass().waiting == [target]  # not before its retry delay
    assert len(calls()) == 1
    time.sleep(0.6)
    assert syncer.run_pass().synced == [target]
    assert [c["argv"][-1] for c in calls()] == [str(target)] * 2
    assert not command.exists()


def test_a_failed_sync_is_retried_by_a_restarted_syncer(tmp_path, fake_wandb):
    _, fail, calls = fake_wandb
    fail.write_text("1")
    scratch = tmp_path / "scratch"
    target = planted_run(scratch / "runs" / "a")
    signal(scratch, target)
    failed = cli("sync", "--once", "--out", str(scratch))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"W&B: sync of {target} failed (exit status 1: wandb: ERROR Network error" in failed.stderr
    again = cli("sync", "--once", "--out", str(scratch))
    assert again.returncode == 0, again.stderr
    assert "synced 1 run(s), 0 failed" in again.stderr and len(calls()) == 2


def test_a_signal_written_during_the_sync_is_kept_for_the_next_pass(tmp_path, fake_wandb, monkeypatch):
    """The run's last epoch signals while the previous epoch uploads: that upload may miss it, so
    the new signal must survive the pass (wandb-osh's own syncer deletes it after the sync)."""
    _, _, calls = fake_wandb
    scratch = tmp_path / "scratch"
    target = planted_run(scratch / "runs" / "a")
    command = signal(scratch, target)
    monkeypatch.setenv("WANDB_SIGNAL_AGAIN", f"{command}={target}")
    syncer = wandb_sync.Syncer(layout.sync_dir(scratch))
    assert syncer.run_pass().synced == [target]
    assert command.read_text() == str(target)
    monkeypatch.delenv("WANDB_SIGNAL_AGAIN")
    assert syncer.run_pass().synced == [target] and not command.exists()
    assert len(calls()) == 2


def test_sync_of_one_sweep_takes_its_trials_and_retrainings_only(tmp_path, fake_wandb):
    _, _, calls = fake_wandb
    sweep, other = make_sweep(tmp_path), make_sweep(tmp_path)
    scratch = sweep.scratch_root
    mine = [planted_run(sweep.trials_dir / "0000"),
            planted_run(layout.runs_dir(scratch) / layout.retrain_run_id(sweep.id, 1, 0))]
    theirs = [planted_run(other.trials_dir / "0000"), planted_run(layout.runs_dir(scratch) / "plain")]
    for target in mine + theirs:
        signal(scratch, target)
    result = cli("sync", "--once", "--sweep", sweep.id, "--out", str(scratch))
    assert result.returncode == 0, result.stderr
    assert sorted(c["argv"][-1] for c in calls()) == sorted(map(str, mine))
    left = sorted(p.read_text() for p in layout.sync_dir(scratch).glob("*.command"))
    assert left == sorted(map(str, theirs))  # for another syncer, or a later one without --sweep


def test_bad_input_is_one_line(tmp_path, fake_wandb):
    sweep = make_sweep(tmp_path)
    scratch = sweep.scratch_root
    one_error_line(cli("sync", "--once", "--sweep", "nope", "--out", str(scratch)), "sweep 'nope' not found")
    one_error_line(cli("sync", "--once", "--sweep", "../x", "--out", str(scratch)), "sweep id '../x'")
    one_error_line(cli("sync", "--interval", "0", "--out", str(scratch)), "--interval 0")
    layout.sync_dir(scratch).write_text("not a directory")
    one_error_line(cli("sync", "--once", "--out", str(scratch)), f"{layout.sync_dir(scratch)}: not a directory")


def test_a_sweep_agents_trials_signal_and_sync_by_sweep(tmp_path, demo_data, fake_wandb, monkeypatch):
    """A real local-backend agent trains one trial (1 epoch, 32 px), offline; `sync --sweep` uploads it."""
    from inat.sweep import new_sweep
    from inat.sweep.local import run_agent
    from inat.sweep.study import create_study

    _, _, calls = fake_wandb
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "s.yaml").write_text("method: random\nmetric: {name: val_accuracy, goal: maximize}\n"
                                     "parameters:\n  learning_rate: {values: [0.003]}\n")
    fixed = {"epochs": 1, "image_size": 32, "filt_org": [8, 8, 16, 16, 16], "num_dense": 16, "batch_size": 32}
    sweep, spec = new_sweep(tmp_path / "scratch", tmp_path / "s.yaml", "local", demo_data, fixed)
    create_study(sweep, spec)
    run_agent(sweep, "agent-0", count=1)
    target = offline_dir(sweep.trials_dir / "0000")
    result = cli("sync", "--once", "--sweep", sweep.id, "--out", str(sweep.scratch_root))
    assert result.returncode == 0, result.stderr
    assert [c["argv"] for c in calls()] == [["sync", "--include-synced", str(target)]]


def test_help_has_an_example():
    assert "sync" in cli("--help").stdout
    result = cli("sync", "--help")
    assert result.returncode == 0 and "Example" in result.stdout and "inat-jobs sync --sweep" in result.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_a_slurm_agent_signals_and_a_running_syncer_uploads_its_trial(tmp_path, demo_data, fake_wandb):
    """An agent as a Slurm job (2 epochs, offline) while `inat-jobs sync --sweep` runs beside it."""
    import signal as signals

    from conftest import CI_PROFILE, SLURM_SWEEP, SLURM_TINY, require, run_cli, start_cli
    from jobs.slurm import jobstate
    from jobs.slurm.executors import slurm_available

    ok, why = slurm_available(timeout=10)
    require(ok, f"needs a running Slurm cluster ({why}); start one with scripts/slurm/setup-cluster.sh")
    _, _, calls = fake_wandb
    (tmp_path / "s.yaml").write_text(SLURM_SWEEP)
    scratch = tmp_path / "scratch"
    env = {"INAT_CLUSTER_PROFILE": str(CI_PROFILE), "WANDB_MODE": "offline"}
    result = run_cli("launch-sweep", "--sweep", str(tmp_path / "s.yaml"), "--agents", "1", "--trials-per-agent",
                     "1", "--data", str(demo_data), "--out", str(scratch), *SLURM_TINY, "--cluster", "slurm",
                     "--json", env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    syncer = start_cli("sync", "--sweep", out["sweep_id"], "--out", str(scratch), "--interval", "1")
    try:
        rows = jobstate.wait_for([{"stage": "agent", "task_ids": out["job_ids"], "cluster": "slurm"}],
                                 poll_s=3, timeout_s=300, say=lambda *_: None)
        assert [r["State"] for r in rows] == ["COMPLETED"], rows
        target = offline_dir(scratch / "sweeps" / out["sweep_id"] / "trials" / "0000")
        deadline = time.monotonic() + 30
        while layout.sync_dir(scratch).is_dir() and list(layout.sync_dir(scratch).glob("*.command")):
            assert time.monotonic() < deadline, "the syncer left the last signal"
            time.sleep(0.5)
    finally:
        syncer.send_signal(signals.SIGINT)
        stdout, stderr = syncer.communicate(timeout=30)
    assert syncer.returncode == 130, stderr
    assert {tuple(c["argv"]) for c in calls()} == {("sync", "--include-synced", str(target))}
    assert f"W&B: synced {target}" in stderr


def test_the_real_wandb_sync_finds_the_run_we_name_even_once_synced(tmp_path, monkeypatch):
    """W&B's own CLI (--dry-run: no server) on what the syncer runs: it finds the offline run, and
    only --include-synced keeps it from skipping a run that an earlier sync marked as synced."""
    import subprocess

    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="inat-jobs")
    run.log({"epoch": 1})
    run.finish()
    target = offline_dir(tmp_path)
    (target / f"run-{run.id}.wandb.synced").write_text("")
    command = wandb_sync.Syncer(tmp_path / "commands").command(target)
    assert Path(command[0]).name == "wandb" and command[1:] == ["sync", "--include-synced", str(target)]

    def dry_run(argv):
        proc = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    found = dry_run(command)
    assert "Would sync 1 run(s)" in found and f"run-{run.id}.wandb" in found
    assert "Skipped 1 synced run(s)" in dry_run([c for c in command if c != "--include-synced"])

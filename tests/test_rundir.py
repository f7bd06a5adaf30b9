"""inat.rundir: the one history reader, the rule that picks a run's best epoch, and the run's lock."""

import math

import pytest

from inat.config import RunConfig
from inat.errors import ConfigError, InatError
from inat.fsutil import write_json
from inat.rundir import RunDir, best_epoch

NAN = math.nan


def rows(*values, key="val_loss"):
    return [{"epoch": float(i + 1), key: v} for i, v in enumerate(values)]


@pytest.mark.parametrize("values, maximize, expected", [
    ((0.5, 0.4, 0.45), False, (2, 0.4)),
    ((0.5, 0.4, 0.45), True, (1, 0.5)),
    ((0.4, 0.3, 0.3), False, (2, 0.3)),  # a tie keeps the earlier epoch
    ((NAN, 0.7, NAN), False, (2, 0.7)),  # NaN never wins
    ((NAN, NAN), True, None),
    ((), True, None),
])
def test_best_epoch(values, maximize, expected):
    assert best_epoch(rows(*values), "val_loss", maximize) == expected


def test_committed_rows_leave_out_a_row_past_the_commit_point(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n"
                                          "1,1,0,1,0,1\n2,1,0,0.5,0,1\n3,1,0,0.1,0,1\n")
    assert len(RunDir(tmp_path).committed_history()) == 3  # no state file: nothing to trim against
    write_json(tmp_path / "checkpoint" / "state.json", {"epoch": 2})
    got = RunDir(tmp_path).committed_history()
    assert [int(r["epoch"]) for r in got] == [1, 2] and best_epoch(got, "val_loss", False) == (2, 0.5)


def test_best_model_path_prefers_a_committed_best_that_waits_in_checkpoint(tmp_path):
    assert RunDir(tmp_path).best_model_path() == tmp_path / "model.keras"
    write_json(tmp_path / "checkpoint" / "state.json", {"epoch": 3, "best_model": "best-0003.keras"})
    assert RunDir(tmp_path).best_model_path() == tmp_path / "model.keras"  # already renamed
    (tmp_path / "checkpoint" / "best-0003.keras").write_bytes(b"x")
    assert RunDir(tmp_path).best_model_path() == tmp_path / "checkpoint" / "best-0003.keras"


def test_monitor_keys():
    assert RunConfig().monitor == "val_accuracy" and RunConfig().monitor_maximize
    assert not RunConfig.from_dict({"monitor": "val_loss"}).monitor_maximize
    assert RunConfig.from_dict({"monitor": "val_loss", "monitor_goal": "maximize"}).monitor_maximize
    assert not RunConfig.from_dict({"monitor": "accuracy", "monitor_goal": "minimize"}).monitor_maximize
    with pytest.raises(ConfigError, match="key 'monitor' = 'val_f1' is invalid; allowed: val_accuracy"):
        RunConfig.from_dict({"monitor": "val_f1"})
    with pytest.raises(ConfigError, match="key 'monitor_goal' = 'up' is invalid"):
        RunConfig.from_dict({"monitor_goal": "up"})


# ---- the run's lock ---------------------------------------------------------------------------------


def test_a_run_locked_by_another_process_is_refused(tmp_path):
    """A real second process holds the run's lock: only then is it "another process"."""
    import subprocess
    import sys


    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"fh = open({str(run_dir / '.lock')!r}, 'a+')\n"
         "fcntl.flock(fh, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InatError, match="another process is training this run right now"):
            with RunDir(run_dir).exclusive():
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunDir(run_dir).exclusive():  # the holder is gone: the lock is free again
        pass


@pytest.mark.parametrize("name", ["ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS"])
def test_a_file_system_without_locks_is_named_not_blamed_on_another_process(tmp_path, monkeypatch, name):
    """Lustre mounted without flock, NFS without a lock daemon: flock() fails, but nobody holds it."""
    import errno
    import fcntl
    import os


    code = getattr(errno, name)

    def no_locks(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(InatError) as err:
        with RunDir(run_dir).exclusive():
            pytest.fail("trained without a lock")
    message = str(err.value)
    assert "another process" not in message
    assert message.startswith(f"{run_dir}: the file system holding this run does not support file locks")
    assert os.strerror(code) in message and "-o flock" in message and "--out" in message
    assert "\n" not in message


def test_any_other_lock_error_is_not_blamed_on_another_process(tmp_path, monkeypatch):
    import errno
    import fcntl


    def broken(fd, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    (tmp_path / "run").mkdir()
    with pytest.raises(InatError, match=r"run: cannot lock .*\.lock: Input/output error") as err:
        with RunDir(tmp_path / "run").exclusive():
            pass
    assert "another process" not in str(err.value)


def test_run_json_updates_from_two_processes_lose_nothing(tmp_path):
    """update_info is a read-modify-write under a lock: 2 processes x 60 updates, every field kept."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "run").mkdir()
    code = ("import sys\nfrom inat.rundir import RunDir\nrun = RunDir(sys.argv[1])\n"
            "for i in range(60):\n    run.update_info(**{f'{sys.argv[2]}{i}': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), who],
                              env={"PYTHONPATH": str(REPO)}) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    info = RunDir(tmp_path / "run").info()
    assert {f"{w}{i}" for w in "ab" for i in range(60)} <= set(info), len(info)


def test_run_dir_reads_states_through_one_table(tmp_path):
    run = RunDir(tmp_path)
    assert run.state_name() == "running" and run.info() == {}
    for status, state in (("completed", "finished"), ("stopped", "pruned"), ("pruned", "pruned"),
                          ("failed", "failed")):
        run.update_info(status=status)
        assert run.state_name() == state
    assert run.info()["run_id"] == tmp_path.name

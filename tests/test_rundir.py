"""inat.rundir: the one history reader and the rule that picks a run's best epoch."""

import math

import pytest

from inat.config import RunConfig
from inat.errors import ConfigError
from inat.fsutil import write_json
from inat.rundir import best_epoch, best_model_path, committed_rows

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
    assert len(committed_rows(tmp_path)) == 3  # no state file: nothing to trim against
    write_json(tmp_path / "checkpoint" / "state.json", {"epoch": 2})
    got = committed_rows(tmp_path)
    assert [int(r["epoch"]) for r in got] == [1, 2] and best_epoch(got, "val_loss", False) == (2, 0.5)


def test_best_model_path_prefers_a_committed_best_that_waits_in_checkpoint(tmp_path):
    assert best_model_path(tmp_path) == tmp_path / "model.keras"
    write_json(tmp_path / "checkpoint" / "state.json", {"epoch": 3, "best_model": "best-0003.keras"})
    assert best_model_path(tmp_path) == tmp_path / "model.keras"  # already renamed
    (tmp_path / "checkpoint" / "best-0003.keras").write_bytes(b"x")
    assert best_model_path(tmp_path) == tmp_path / "checkpoint" / "best-0003.keras"


def test_monitor_keys():
    assert RunConfig().monitor == "val_accuracy" and RunConfig().monitor_maximize
    assert not RunConfig.from_dict({"monitor": "val_loss"}).monitor_maximize
    assert RunConfig.from_dict({"monitor": "val_loss", "monitor_goal": "maximize"}).monitor_maximize
    assert not RunConfig.from_dict({"monitor": "accuracy", "monitor_goal": "minimize"}).monitor_maximize
    with pytest.raises(ConfigError, match="key 'monitor' = 'val_f1' is invalid; allowed: val_accuracy"):
        RunConfig.from_dict({"monitor": "val_f1"})
    with pytest.raises(ConfigError, match="key 'monitor_goal' = 'up' is invalid"):
        RunConfig.from_dict({"monitor_goal": "up"})

"""inat.layout: the scratch layout and its one id rule, which the sweep lookup applies too."""

import pytest

from inat import layout
from inat.errors import ConfigError, InatError
from inat.fsutil import write_json
from inat.sweep import find_sweep, sweep_ids


@pytest.mark.parametrize("value", ["r1", "20250101-000000-abcd", "a.b_c-d", "-x", "x" * 128])
def test_ids_that_name_one_directory_pass(value):
    assert layout.check_id(value, "--run-id", "SCRATCH/runs/") == value


@pytest.mark.parametrize("value", ["", ".", "..", ".hidden", "../x", "a/b", "/abs", "a b", "x" * 129, None])
def test_ids_that_could_leave_their_folder_are_one_line_errors(value):
    with pytest.raises(ConfigError, match=r"it names a directory under SCRATCH/runs/\)$") as err:
        layout.check_id(value, "--run-id", "SCRATCH/runs/")
    assert str(err.value).startswith(f"--run-id {value!r}: use 1-128 letters") and "\n" not in str(err.value)


def test_scratch_paths(tmp_path):
    assert layout.root_of(layout.runs_dir(tmp_path) / "r1") == tmp_path
    assert layout.retrain_run_id("s1", 2, 0) == "s1-best2-seed0"
    (layout.runs_dir(tmp_path) / "s1-best2-seed0").mkdir(parents=True)
    (layout.runs_dir(tmp_path) / "s10-best1-seed0").mkdir()
    assert [p.name for p in layout.retrain_runs(tmp_path, "s1")] == ["s1-best2-seed0"]


def test_the_sweep_lookup_checks_the_id_before_it_looks(tmp_path):
    sweep = layout.sweeps_dir(tmp_path) / "s1"
    write_json(sweep / "sweep.json", {})
    (layout.sweeps_dir(tmp_path) / "copied").mkdir()  # trials without their record
    assert find_sweep(tmp_path, "s1") == sweep and sweep_ids(tmp_path) == ["s1"]
    assert find_sweep(tmp_path, "copied", record=False) == layout.sweeps_dir(tmp_path) / "copied"
    assert find_sweep(tmp_path, "nope", missing_ok=True) is None
    with pytest.raises(InatError, match=r"sweep 'copied' not found: .*\(latest there: s1\)"):
        find_sweep(tmp_path, "copied")
    for bad in ("..", "../s1", "s1/../s1"):
        with pytest.raises(ConfigError, match="it names a directory under SCRATCH/sweeps/"):
            find_sweep(tmp_path / "sub", bad, missing_ok=True)


def test_the_scratch_root_of_a_run_directory(tmp_path):
    """Where a run's wandb-osh signals go (inat.wandb_sync): only runs laid out under a scratch root."""
    assert layout.root_of_run(tmp_path / "runs" / "r1") == tmp_path
    assert layout.root_of_run(tmp_path / "sweeps" / "s1" / "trials" / "0003") == tmp_path
    assert layout.sync_dir(tmp_path) == tmp_path / "wandb-osh"
    for elsewhere in ("run", "x/trials/0003", "sweeps/s1/0003", "runs0/r1"):
        assert layout.root_of_run(tmp_path / elsewhere) is None

"""--dry-run on every submitting command, without a cluster: what each would submit (the sbatch scripts
submitit would write, array sizes, dependencies), nothing submitted and nothing written, and options
still checked. tests/test_slurm.py checks the same against the real cluster (squeue, and the script
submitit then writes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, cli, one_error_line
from inat.fsutil import write_json
from jobs.slurm.profile import load_profile
from jobs.slurm.executors import sbatch_text

CI_PROFILE = REPO / "configs" / "clusters" / "ci.yaml"
SWEEP = REPO / "configs" / "sweeps" / "sweep_demo.yaml"


def tree(root: Path) -> dict[str, float]:
    """Every path under root with its mtime: what a dry run must leave as it was."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def scripts(text: str) -> dict[str, str]:
    """The sbatch scripts a dry run printed, by stage."""
    out, stage, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("----- sbatch script of "):
            stage, lines = line.split()[4], []
        elif line.startswith("----- end of ") and stage:
            out[stage] = "\n".join(lines) + "\n"
            stage = None
        elif stage:
            lines.append(line)
    return out


@pytest.fixture
def env(tmp_path):
    # INAT_SCRATCH too: a command that ignored --out would write there
    return {"INAT_SCRATCH": str(tmp_path / "env-scratch"), "INAT_CLUSTER_PROFILE": str(CI_PROFILE)}


def test_pipeline_dry_run_shows_four_chained_arrays_and_writes_nothing(tmp_path, demo_data, env):
    scratch = tmp_path / "scratch"
    args = ["pipeline", "--sweep", str(SWEEP), "--agents", "3", "--trials-per-agent", "2", "--data", str(demo_data),
            "--out", str(scratch), "--top-k", "2", "--seeds", "2", "--cluster", "slurm", "--dry-run"]
    result = cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["dry_run"] is True and shown["cluster"] == "slurm"
    subs = shown["submissions"]
    assert [(s["stage"], s["array_size"], s["dependency"]) for s in subs] == [
        ("agent", 3, None), ("train", 4, "afterany:<agent job id>"), ("test", 4, "afterany:<train job id>"),
        ("visualize", 5, "afterany:<test job id>")]
    profile = load_profile(CI_PROFILE)
    for s in subs:  # the text submitit writes for that submission (tests/golden pins its form)
        assert s["script"] == sbatch_text(profile, s["stage"], Path(s["folder"]), s["array_size"], s["dependency"])
        assert s["folder"] == str(scratch / "jobs" / "<sweep-id>" / s["stage"])
    assert f"#SBATCH --array=0-3%{profile.array_parallelism}" in subs[1]["script"]
    assert "#SBATCH --dependency='afterany:<agent job id>'" in subs[1]["script"]
    assert not scratch.exists() and not (tmp_path / "env-scratch").exists()

    text = cli(*args, env=env)  # the same, for people: the scripts between markers
    assert text.returncode == 0 and text.stdout.startswith("dry run: nothing is submitted and nothing is written")
    assert scripts(text.stdout) == {s["stage"]: s["script"] for s in subs}
    assert not scratch.exists()


def test_launch_sweep_dry_run_and_local(tmp_path, demo_data, env):
    scratch = tmp_path / "scratch"
    base = ["launch-sweep", "--sweep", str(SWEEP), "--agents", "2", "--trials-per-agent", "1", "--data",
            str(demo_data), "--out", str(scratch), "--dry-run"]
    result = cli(*base, "--cluster", "slurm", env=env)
    assert result.returncode == 0, result.stderr
    assert "agent: would submit an array of 2 tasks" in result.stdout
    assert list(scripts(result.stdout)) == ["agent"]
    local = cli(*base, "--cluster", "local", env=env)
    assert local.returncode == 0, local.stderr
    assert local.stdout.splitlines() == [
        f"dry run: nothing would be submitted; --cluster local would create sweep {scratch}/sweeps/<sweep-id> "
        "and start 2 agent process(es) here"]
    assert not scratch.exists() and not (tmp_path / "env-scratch").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--agents", "0"], "--agents 0: expected an integer >= 1"),
    (["--agents", "1", "--cluster-set", "time=-1"], "key 'time' = -1 is invalid"),
    (["--agents", "1", "--top-k", "0"], "--top-k 0"),
    (["--agents", "1", "--what", "gird"], "unknown figure 'gird'"),
    (["--agents", "1", "--set", "dropuot=0.1"], "dropuot"),
])
def test_a_bad_option_is_still_a_one_line_error_under_dry_run(tmp_path, demo_data, env, extra, fragment):
    scratch = tmp_path / "scratch"
    result = cli("pipeline", "--sweep", str(SWEEP), "--trials-per-agent", "1", "--data", str(demo_data),
                 "--out", str(scratch), "--cluster", "slurm", "--dry-run", *extra, env=env)
    one_error_line(result, fragment)
    assert not scratch.exists()


def fake_sweep(scratch: Path, data: Path) -> Path:
    """A finished local sweep of one trial, as retrain-best reads it (no study needed)."""
    from inat.config import RunConfig

    sweep = scratch / "sweeps" / "S1"
    trial = sweep / "trials" / "0000"
    trial.mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("method: random\nparameters:\n  dropout: {values: [0.1, 0.2]}\n")
    write_json(sweep / "sweep.json", {"id": "S1", "backend": "local", "data_root": str(data)})
    RunConfig.load(None, ["image_size=32", "epochs=2", "dropout=0.1"]).save(trial / "config.yaml")
    write_json(trial / "run.json", {"run_id": "0000", "status": "completed"})
    (trial / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n1,1,0.5,1,0.4,1\n"
                                       "2,1,0.6,1,0.5,1\n")
    (trial / "model.keras").write_bytes(b"model")
    return sweep


def test_retrain_best_dry_run_writes_nothing(tmp_path, demo_data, env):
    scratch = tmp_path / "scratch"
    fake_sweep(scratch, demo_data)
    before = tree(scratch)
    result = cli("retrain-best", "--sweep-id", "S1", "--out", str(scratch), "--seeds", "2", "--cluster", "slurm",
                 "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "train: would submit an array of 2 tasks" in result.stdout
    script = scripts(result.stdout)["train"]
    assert script == sbatch_text(load_profile(CI_PROFILE), "train", scratch / "jobs" / "S1" / "train", 2)
    assert tree(scratch) == before  # no retrain.json, no jobs.json, no job folder
    local = cli("retrain-best", "--sweep-id", "S1", "--out", str(scratch), "--cluster", "local", "--dry-run", env=env)
    assert local.returncode == 0 and "nothing would be submitted" in local.stdout.splitlines()[-1]
    assert tree(scratch) == before
    one_error_line(cli("retrain-best", "--sweep-id", "S2", "--out", str(scratch), "--dry-run", env=env),
                   "sweep 'S2' not found")


@pytest.mark.parametrize("command", ["test", "visualize"])
def test_test_and_visualize_dry_run(tmp_path, env, command):
    scratch = tmp_path / "scratch"
    run = scratch / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes(b"model")
    before = tree(scratch)
    result = cli(command, "--run", str(run), "--cluster", "slurm", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert f"{command}: would submit one job; dependency: none" in result.stdout
    (stage, script), = scripts(result.stdout).items()
    assert stage == command and f"#SBATCH --job-name=inat-{command}" in script
    here = cli(command, "--run", str(run), "--dry-run", env=env)
    assert here.returncode == 0 and here.stdout.splitlines() == [
        f"dry run: nothing would be submitted; {command} would run in this process on 1 run(s) "
        "(--cluster slurm submits it)"]
    assert tree(scratch) == before
    one_error_line(cli(command, "--run", str(tmp_path / "nope"), "--cluster", "slurm", "--dry-run", env=env),
                   "run directory not found")


def test_every_submitting_command_documents_dry_run():
    for command in ("launch-sweep", "pipeline", "retrain-best", "test", "visualize"):
        result = cli(command, "--help", env={"COLUMNS": "200"})
        assert result.returncode == 0 and "Example" in result.stdout, command
        example = result.stdout[result.stdout.index("Example"):].split("Options")[0]
        assert "--dry-run" in example, (command, example)

"""Bad input, through the real `inat-jobs` command line: one table, one test per row.

A rejected input must end with a non-zero exit, exactly one line on stderr that starts with
`inat-jobs: error:` and names the culprit and what to do (the row's fragments), no traceback, and
nothing half-written. "Nothing half-written" is checked the same way for every rejected row: the
files under the test's directory (dataset, scratch root, run directories) are byte-for-byte and
mtime-for-mtime what they were before, nothing is deleted, no `*.tmp*` file is left anywhere, and
the only directories allowed to appear are the empty scratch root and its `runs/` and `sweeps/`
folders (a run or sweep directory the command made before failing must be gone again).

Rows with `strict=False` fail after the run has legitimately logged its progress (the dataset
summary, the junk files it ignored); there every line but the last must be one of those log lines
(`INFO: ...` / `WARNING: ...`), and the last is the one error line.

Rows with `ok=True` are inputs the tool accepts: odd images and junk files. They train one tiny
epoch, exit 0, and must say what they skipped, in the log and in splits.json.

Every row starts from the same small dataset and trained run, made once and only read; a row that
breaks or resumes one of them works on its own copy (`Ctx.own_data`, `Ctx.own_run`). The "nothing
half-written" check covers the shared ones as well.

Rows run `inat-jobs` in this process (`conftest.cli`), but for those marked `fresh`, which run it as a
new process: commands that load TensorFlow, Keras or HDF5 before they fail, where only a real process
shows that nothing those libraries write to file descriptor 2 reaches the user; a Keras setting
(KERAS_HOME) that Keras reads once, on import; and sbatch's complaint, which the CLI keeps off file
descriptor 2.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import cli, require, run_cli

TINY = ["--set", "epochs=1", "--set", "image_size=32", "--set", "filt_org=[4,4,4,4,4]",
        "--set", "num_dense=8", "--set", "batch_size=16"]
# TF_CPP_MIN_LOG_LEVEL as the CLI sets it when unset: a developer's own value must not change the rows.
ENV = {"WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
SWEEP = ("method: random\nmetric: {name: val_accuracy, goal: maximize}\nrun_cap: 2\n"
         "parameters:\n  dropout: {values: [0.1, 0.2]}\n")


# ---- the context each row builds on -----------------------------------------------------------------


@dataclass
class Ctx:
    tmp: Path
    data: Path  # the shared small dataset (read-only), or the row's own copy after own_data()
    run: Path  # the shared trained run (read-only), or the row's own copy after own_run()
    mounts: list[Path] = field(default_factory=list)
    sweep_id: str = ""  # set by rows that make a sweep first

    def __post_init__(self):
        self.shared = (self.data, self.run)

    @property
    def scratch(self) -> Path:
        return self.tmp / "scratch"

    def own_data(self) -> Path:
        """A private copy of the dataset, TMP/data, for a row that changes it."""
        if self.data == self.shared[0]:
            shutil.copytree(self.shared[0], self.tmp / "data")
            self.data = self.tmp / "data"
        return self.data

    def own_run(self) -> Path:
        """A private copy of the trained run, SCRATCH/runs/trained, for a row that changes or resumes it."""
        if self.run == self.shared[1]:
            shutil.copytree(self.shared[1], self.scratch / "runs" / "trained")
            self.run = self.scratch / "runs" / "trained"
        return self.run

    def file(self, rel: str, text: str = "") -> Path:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def mount_tmpfs(self, name: str, options: str) -> Path:
        where = self.tmp / name
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
        self.mounts.append(where)
        return where


def jpeg_bytes(size=(48, 40), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def save(path: Path, mode: str, color, fmt: str = "JPEG") -> None:
    Image.new(mode, (40, 32), color).save(path, format=fmt)


def _can_mount() -> bool:
    probe = Path(f"/tmp/inat-mount-probe-{uuid.uuid4().hex[:8]}")
    probe.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                              capture_output=True)
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:
        return False
    finally:
        probe.rmdir()


# ---- the table --------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]  # fragments of the error line (or, for ok rows, of stderr)
    setup: Callable[[Ctx], None] | None = None
    env: Callable[[Ctx], dict] | None = None
    ok: bool = False
    strict: bool = True
    check: Callable[[Ctx], None] | None = None  # more assertions after the command
    mount: bool = False  # needs `mount -t tmpfs` (root)
    slurm: bool = False  # needs a Slurm controller to answer
    slow: bool = False
    fresh: bool = False  # run as a new process (see the module doc)
    xfail: str = ""  # a known bug, left to the module's owner: the row must fail until it is fixed


def train(c: Ctx, *extra: str, data: Path | None = None, out: Path | None = None) -> list[str]:
    return ["train", "--data", str(data or c.data), "--out", str(out or c.scratch), *TINY, *extra]


def train_new(c: Ctx) -> list[str]:
    return train(c, "--run-id", "new")


def launch(c: Ctx, sweep_text: str, *extra: str) -> list[str]:
    path = c.file("sweep.yaml", sweep_text)
    return ["launch-sweep", "--sweep", str(path), "--data", str(c.data), "--out", str(c.scratch),
            "--cluster", "local", *extra]


def splits_of(c: Ctx) -> dict:
    return json.loads((c.scratch / "runs" / "new" / "splits.json").read_text())


def trained_ok(c: Ctx) -> Path:
    run = c.scratch / "runs" / "new"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert zipfile.is_zipfile(run / "model.keras")
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header + epoch 1
    return run


def cache_bad(c: Ctx, rel: str) -> None:
    trained_ok(c)
    (manifest,) = (c.scratch / "cache").glob("*/*px/manifest.json")
    assert rel in [row[0] for row in json.loads(manifest.read_text())["bad"]]


def bad_recorded(*expected: tuple[str, str]) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        trained_ok(c)
        assert [tuple(b) for b in splits_of(c)["bad"]] == list(expected)
    return check


def accepted(rel: str) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        trained_ok(c)
        s = splits_of(c)
        assert rel in [p for split in ("train", "val") for p, _ in s[split]] and s["bad"] == []
    return check


def write(rel: str, content: bytes | Callable[[], bytes]) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        (c.own_data() / rel).write_bytes(content() if callable(content) else content)
    return setup


def image(rel: str, mode: str, color, fmt: str = "JPEG") -> Callable[[Ctx], None]:
    return lambda c: save(c.own_data() / rel, mode, color, fmt)


def remove(rel: str) -> Callable[[Ctx], None]:
    """Delete DATA/rel, a folder or a file, from the row's own dataset."""
    def setup(c: Ctx) -> None:
        path = c.own_data() / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return setup


def empty_class_folder(c: Ctx) -> None:
    for sub in ("train", "val"):
        (c.own_data() / sub / "Empty").mkdir()


def junk_only_class(c: Ctx) -> None:
    for sub in ("train", "val"):
        (c.own_data() / sub / "Zzz").mkdir()
        (c.data / sub / "Zzz" / "notes.txt").write_text("no images here")


def all_unreadable_class(c: Ctx) -> None:
    for path in (c.own_data() / "train" / "Fungi").iterdir():
        path.write_bytes(path.read_bytes()[: 200])  # every JPEG cut short


def junk_files(c: Ctx) -> None:
    (c.own_data() / "train" / "Aves" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (c.data / "train" / "Aves" / "notes.txt").write_text("field notes")
    (c.data / "val" / "Fungi" / "aves_0000.jpg:Zone.Identifier").write_text("[ZoneTransfer]\n")


def junk_recorded(c: Ctx) -> None:
    trained_ok(c)
    assert sorted(splits_of(c)["ignored"]) == [
        "train/Aves/.DS_Store", "train/Aves/Thumbs.db", "train/Aves/notes.txt", "val/Fungi/aves_0000.jpg:Zone.Identifier",
    ]


def corrupt_inside(c: Ctx) -> None:
    good = jpeg_bytes((120, 90), seed=1)
    noise = np.random.default_rng(2).bytes(len(good) - 1400)
    (c.own_data() / "train" / "Aves" / "scribbled.jpg").write_bytes(good[:700] + noise + good[-700:])


def fill_disk(c: Ctx) -> None:
    c.mount_tmpfs("full", "size=512k")


def keras_home(c: Ctx) -> dict:
    # Outside c.tmp: Keras writes its own keras.json there on import, which is not ours to judge.
    home = c.tmp.with_name(c.tmp.name + "-keras-home")
    home.mkdir(exist_ok=True)
    return {"KERAS_HOME": str(home)}


def no_model(c: Ctx) -> None:
    (c.own_run() / "model.keras").unlink()


def make_sweep(c: Ctx) -> str:
    from inat.sweep import new_sweep
    from inat.sweep.study import create_study

    sweep, spec = new_sweep(c.scratch, c.file("made.yaml", SWEEP), "local", c.data, {"epochs": 1})
    create_study(sweep, spec)
    c.sweep_id = sweep.id
    return sweep.id


def damage_journal(c: Ctx) -> None:
    journal = c.scratch / "sweeps" / make_sweep(c) / "optuna.journal"
    # A torn record with more records after it (one at the end is skipped as still being written).
    journal.write_text('{"op_code": 4, "worker_id": "torn\n' + journal.read_text())


def damage_record(c: Ctx) -> None:
    (c.scratch / "sweeps" / make_sweep(c) / "sweep.json").write_text('{"id": "x"}\n')


def cut(rel: str, keep: int) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        path = c.own_run() / rel
        path.write_bytes(path.read_bytes()[:keep])
    return setup


CASES = [
    # -- images and junk the tool accepts: it trains and says what it skipped --------------------------
    Case("truncated-jpeg", train_new, ("skipping 1 unreadable image(s): train/Aves/cut.jpg (truncated JPEG",),
         setup=write("train/Aves/cut.jpg", lambda: jpeg_bytes()[:600]), ok=True, slow=True,
         check=bad_recorded(("train/Aves/cut.jpg", "truncated JPEG (no end marker)"))),
    Case("corrupt-jpeg", train_new, ("skipping 1 unreadable image(s): train/Aves/junk.jpg (not a JPEG or PNG file)",),
         setup=write("train/Aves/junk.jpg", b"\x00garbage where the JPEG header should be" * 20), ok=True,
         slow=True, check=bad_recorded(("train/Aves/junk.jpg", "not a JPEG or PNG file"))),
    Case("empty-jpeg", train_new, ("skipping 1 unreadable image(s): val/Fungi/empty.jpg (empty file)",),
         setup=write("val/Fungi/empty.jpg", b""), ok=True, slow=True,
         check=bad_recorded(("val/Fungi/empty.jpg", "empty file"))),
    Case("gif-named-jpg", train_new, ("train/Aves/anim.jpg (GIF content; only JPEG and PNG are supported (convert it))",),
         setup=image("train/Aves/anim.jpg", "RGB", (9, 9, 9), "GIF"), ok=True, slow=True,
         check=bad_recorded(("train/Aves/anim.jpg", "GIF content; only JPEG and PNG are supported (convert it)"))),
    Case("png-named-jpg", train_new, ("INFO: data: 10 classes",), setup=image("train/Aves/png.jpg", "RGB", (1, 2, 3), "PNG"),
         ok=True, slow=True, check=accepted("train/Aves/png.jpg")),
    Case("grayscale-jpeg", train_new, ("INFO: data: 10 classes",), setup=image("train/Aves/gray.jpg", "L", 128),
         ok=True, slow=True, check=accepted("train/Aves/gray.jpg")),
    Case("cmyk-jpeg", train_new, ("INFO: data: 10 classes",), setup=image("train/Aves/cmyk.jpg", "CMYK", (0, 255, 255, 0)),
         ok=True, slow=True, check=accepted("train/Aves/cmyk.jpg")),
    Case("junk-files", train_new, ("ignored 4 non-image file(s)", "4 files ignored"), setup=junk_files, ok=True,
         slow=True, check=junk_recorded),
    # Valid start and end markers around noise: the cheap check cannot see it. Building the decoded-
    # image cache (train's default) decodes every image and names it; without the cache the pipeline
    # drops or decodes it unnamed (a documented gap), and training still finishes.
    Case("jpeg-corrupt-inside", train_new,
         ("cache skipped 1 unreadable image(s): train/Aves/scribbled.jpg (TensorFlow could not decode it",),
         setup=corrupt_inside, ok=True, slow=True, check=lambda c: cache_bad(c, "train/Aves/scribbled.jpg")),
    Case("jpeg-corrupt-inside-no-cache", lambda c: train(c, "--run-id", "new", "--no-cache"), ("INFO: data: 10 classes",),
         setup=corrupt_inside, ok=True, slow=True, check=trained_ok),
    # -- the dataset ------------------------------------------------------------------------------------
    Case("data-root-missing", lambda c: train(c, data=c.tmp / "nope"),
         ("--data", "nope: directory not found")),
    Case("data-root-is-a-file", lambda c: train(c, data=c.file("data.zip", "PK")),
         ("data.zip: dataset root is not a directory", "pass the folder that holds train/ and val/")),
    Case("no-train-folder", train, ("no train/ folder", "expected", "train/<class>/*.jpg"), setup=remove("train")),
    Case("no-val-folder", train, ("no val/ folder", "val/<class>/*.jpg"), setup=remove("val")),
    Case("one-level-too-high", lambda c: train(c, data=c.data.parent),
         ("no train/ folder", "did you mean", "/data?")),
    Case("empty-class-folder", train, ("train/Empty: class folder has no images", "add images or remove the folder"),
         setup=empty_class_folder),
    Case("junk-only-class-folder", train, ("train/Zzz: class folder has no images",), setup=junk_only_class),
    Case("classes-differ", train, ("different class folders", "only in val/: Fungi", "make them match"),
         setup=remove("train/Fungi")),
    Case("class-all-unreadable", train, ("no readable train images left for class(es) Fungi",
                                         "truncated JPEG", "replace the broken images"),
         setup=all_unreadable_class, strict=False, fresh=True),
    # -- run config -------------------------------------------------------------------------------------
    Case("yaml-does-not-parse", lambda c: train(c, "--config", str(c.file("bad.yaml", "dropout: [0.1,\n"))),
         ("bad.yaml: not valid YAML at line 2",)),
    Case("yaml-not-a-mapping", lambda c: train(c, "--config", str(c.file("list.yaml", "- dropout\n"))),
         ("list.yaml: expected a mapping of key: value, got list",)),
    Case("config-file-missing", lambda c: train(c, "--config", str(c.tmp / "none.yaml")),
         ("none.yaml: file not found",)),
    Case("unknown-key-set", lambda c: train(c, "--set", "dropuot=0.2"), ("unknown key 'dropuot'", "known keys:")),
    Case("unknown-key-file", lambda c: train(c, "--config", str(c.file("k.yaml", "filters: [1, 2]\n"))),
         ("k.yaml", "unknown key 'filters'", "known keys:")),
    Case("wrong-type", lambda c: train(c, "--set", "epochs=ten"), ("key 'epochs' = 'ten' is invalid; expected an integer",)),
    Case("wrong-type-list", lambda c: train(c, "--set", "kernel_size=[3,3]"),
         ("key 'kernel_size'", "expected a list of 5 positive integers")),
    Case("out-of-range", lambda c: train(c, "--set", "dropout=1.5"), ("key 'dropout' = 1.5", "allowed: 0 <= dropout < 1")),
    Case("set-without-value", lambda c: train(c, "--set", "dropout"), ("--set 'dropout': expected key=value",)),
    Case("config-is-a-directory", lambda c: train(c, "--config", str(c.data)), ("data: is a directory; pass a YAML file",)),
    Case("config-not-text", lambda c: train(c, "--config", str(c.data / "train" / "Aves" / "aves_0000.jpg")),
         ("aves_0000.jpg: not a text file", "pass a YAML file")),
    Case("kernel-too-large", lambda c: train(c, "--set", "kernel_size=[3,3,3,3,33]"),
         ("key 'kernel_size'", "kernel sizes above 31 are not supported")),
    Case("unknown-model", lambda c: train(c, "--set", "model=vgg16"), ("key 'model' = 'vgg16'", "allowed: scratch")),
    # -- ImageNet weights, offline ----------------------------------------------------------------------
    Case("weights-file-missing", lambda c: train(c, "--set", "model=resnet50", "--set", "weights=/nonexistent.h5"),
         ("weights file /nonexistent.h5 not found", "imagenet, none, or the path")),
    Case("imagenet-not-cached", lambda c: train(c, "--set", "model=resnet50"),
         ("ImageNet weights for resnet50 are not in the Keras cache", "inat-jobs fetch-weights --models resnet50"),
         env=keras_home, fresh=True),
    Case("weights-file-garbage", lambda c: train(c, "--set", "model=resnet50", "--set",
                                                 f"weights={c.file('w.h5', 'not hdf5')}"),
         ("w.h5 cannot be loaded into resnet50",), strict=False, slow=True, fresh=True),
    # -- scratch storage --------------------------------------------------------------------------------
    Case("out-is-a-file", lambda c: train(c, out=c.file("scratch.txt", "x")),
         ("scratch.txt is a file, not a directory", "point --out or $INAT_SCRATCH at a directory")),
    Case("out-under-proc", lambda c: train(c, out=Path("/proc/1/inat")),
         ("cannot create directory /proc/1/inat/runs/", "point --out or $INAT_SCRATCH at a writable directory")),
    Case("out-read-only", lambda c: train(c, out=c.tmp / "ro"),
         ("cannot create directory", "/ro/runs/", "read-only file system", "--out"),
         setup=lambda c: c.mount_tmpfs("ro", "ro,size=64k"), mount=True),
    # --no-cache: a cache that fits is a complete, shared result; this case is about the run itself.
    Case("out-full", lambda c: ["train", "--data", str(c.data), "--out", str(c.tmp / "full"), "--run-id", "big",
                                "--set", "epochs=1", "--set", "image_size=32", "--no-cache"],
         ("cannot write", "/full/runs/big/", "no space left on device", "--out"),
         setup=fill_disk, mount=True, strict=False, slow=True, fresh=True),
    Case("run-id-escapes", lambda c: train(c, "--run-id", "../elsewhere"), ("--run-id '../elsewhere'",)),
    Case("resume-other-config", lambda c: train(c, "--run-id", "trained", "--set", "dropout=0.3"),
         ("already holds a run with a different config", "use a new --run-id"), setup=Ctx.own_run),
    # -- runs: test / visualize / report ----------------------------------------------------------------
    Case("test-run-missing", lambda c: ["test", "--run", str(c.scratch / "runs" / "nope")], ("nope: run directory not found",),
         fresh=True),
    Case("test-no-model", lambda c: ["test", "--run", str(c.run)], ("no model.keras here", "inat-jobs train"),
         setup=no_model),
    Case("visualize-no-model", lambda c: ["visualize", "--run", str(c.run)],
         ("no model.keras here", "inat-jobs train"), setup=no_model),  # the same check and words as `test`
    Case("test-corrupt-model", lambda c: ["test", "--run", str(c.run)],
         ("model.keras: not a readable Keras model", "re-run `inat-jobs train`"), setup=cut("model.keras", 4000),
         fresh=True),
    Case("visualize-corrupt-model", lambda c: ["visualize", "--run", str(c.run), "--what", "filters"],
         ("model.keras: not a readable Keras model",), setup=cut("model.keras", 4000)),
    Case("test-truncated-splits", lambda c: ["test", "--run", str(c.run)],
         ("splits.json: not valid JSON", "split again"), setup=cut("splits.json", 300)),
    Case("test-batch-size-zero", lambda c: ["test", "--run", str(c.run), "--batch-size", "0"], ("--batch-size 0",)),
    Case("test-batch-size-negative", lambda c: ["test", "--run", str(c.run), "--batch-size", "-3"], ("--batch-size -3",)),
    Case("visualize-unknown-figure", lambda c: ["visualize", "--run", str(c.run), "--what", "heatmap"],
         ("unknown figure 'heatmap'", "choose from grid,filters,guided,confusion")),
    Case("report-not-a-run", lambda c: ["report", str(c.data)],
         ("neither a run directory (config.yaml) nor a sweep directory",)),
    # -- sweeps -----------------------------------------------------------------------------------------
    Case("sweep-unknown-parameter", lambda c: launch(c, SWEEP.replace("dropout:", "dropuot:"), "--agents", "1"),
         ("sweep.yaml: parameters.dropuot: unknown parameter", "known:")),
    Case("sweep-unknown-method", lambda c: launch(c, SWEEP.replace("random", "hill_climb"), "--agents", "1"),
         ("method 'hill_climb' is invalid", "allowed: bayes, random, grid")),
    Case("sweep-does-not-parse", lambda c: launch(c, "method: [random\n", "--agents", "1"), ("not valid YAML",)),
    Case("sweep-never-stops", lambda c: launch(c, SWEEP.replace("run_cap: 2\n", ""), "--agents", "1"),
         ("would never stop", "--trials-per-agent N or add run_cap")),
    Case("agents-zero", lambda c: launch(c, SWEEP, "--agents", "0"), ("--agents 0: expected an integer >= 1",)),
    Case("trials-per-agent-zero", lambda c: launch(c, SWEEP, "--agents", "1", "--trials-per-agent", "0"),
         ("--trials-per-agent 0",)),
    Case("sweep-data-without-train", lambda c: launch(c, SWEEP, "--agents", "1"), ("no train/ folder",),
         setup=remove("train")),
    Case("sweep-id-unknown-status", lambda c: ["sweep-status", "20991231-000000-dead", "--out", str(c.scratch)],
         ("sweep '20991231-000000-dead' not found", "pass --out")),
    Case("sweep-id-unknown-agent", lambda c: ["agent", "--sweep-id", "nope", "--out", str(c.scratch)],
         ("sweep 'nope' not found",)),
    Case("sweep-id-unknown-report", lambda c: ["sweep-report", "nope", "--out", str(c.scratch)],
         ("sweep 'nope' not found",)),
    Case("sweep-id-escapes", lambda c: ["sweep-status", "../../../etc", "--out", str(c.scratch)],
         ("sweep id '../../../etc': use 1-128 letters", "SCRATCH/sweeps/")),
    Case("agent-count-zero", lambda c: ["agent", "--sweep-id", c.sweep_id, "--out", str(c.scratch), "--count", "0"],
         ("--count 0: expected an integer >= 1",), setup=make_sweep),
    Case("sweep-record-damaged", lambda c: ["agent", "--sweep-id", c.sweep_id, "--out", str(c.scratch), "--count", "1"],
         ("sweep.json: not a sweep record", "restore it from a copy, or launch the sweep again"), setup=damage_record),
    Case("sweep-journal-damaged", lambda c: ["sweep-status", c.sweep_id, "--out", str(c.scratch)],
         ("optuna.journal: the sweep's Optuna journal is damaged", "inat-jobs sweep-report"), setup=damage_journal),
    # -- cluster profiles and the cluster commands -------------------------------------------------------
    Case("profile-unknown-key", lambda c: ["test", "--run", str(c.run), "--cluster", "slurm", "--profile",
                                           str(c.file("p.yaml", "partitoin: debug\n"))],
         ("p.yaml: unknown key 'partitoin'", "known keys:")),
    Case("profile-bad-value", lambda c: ["test", "--run", str(c.run), "--cluster", "slurm", "--profile",
                                         str(c.file("p.yaml", "time: -5\n"))],
         ("p.yaml: key 'time' = -5 is invalid", "expected an integer >= 1 (minutes)")),
    Case("profile-unknown-stage", lambda c: ["visualize", "--run", str(c.run), "--cluster", "slurm", "--profile",
                                             str(c.file("p.yaml", "stages:\n  trian: {time: 3}\n"))],
         ("unknown stage 'stages.trian'", "stages: agent, train, test, visualize")),
    Case("profile-reserved-sbatch-option", lambda c: ["test", "--run", str(c.run), "--cluster", "slurm", "--profile",
                                                      str(c.file("p.yaml", "extra: {array: 1-3}\n"))],
         ("key 'extra'", "'array' is set by inat-jobs itself")),
    Case("profile-from-env", lambda c: ["test", "--run", str(c.run), "--cluster", "slurm"],
         ("env.yaml: unknown key 'gpu'",), env=lambda c: {"INAT_CLUSTER_PROFILE": str(c.file("env.yaml", "gpu: 1\n"))}),
    Case("cluster-set-wrong-type", lambda c: ["test", "--run", str(c.run), "--cluster", "slurm", "--cluster-set", "gpus=two"],
         ("--cluster-set: key 'gpus' = 'two' is invalid", "an integer >= 0")),
    Case("cluster-unknown", lambda c: ["test", "--run", str(c.run), "--cluster", "pbs"],
         ("--cluster 'pbs' is invalid", "allowed: auto, slurm, local")),
    Case("top-k-negative", lambda c: ["retrain-best", "--sweep-id", c.sweep_id, "--out", str(c.scratch), "--top-k", "-1",
                                      "--cluster", "local"], ("--top-k -1: expected an integer >= 1",), setup=make_sweep),
    Case("seeds-zero", lambda c: ["retrain-best", "--sweep-id", c.sweep_id, "--out", str(c.scratch), "--seeds", "0",
                                  "--cluster", "local"], ("--seeds 0: expected an integer >= 1",), setup=make_sweep),
    Case("pipeline-agents-zero", lambda c: ["pipeline", "--sweep", str(c.file("p.yaml", SWEEP)), "--agents", "0",
                                            "--data", str(c.data), "--out", str(c.scratch), "--cluster", "local"],
         ("--agents 0: expected an integer >= 1",)),
    Case("collect-unknown-id", lambda c: ["collect", "nope", "--dest", str(c.tmp / "results"), "--out", str(c.scratch)],
         ("'nope': no pipeline, sweep or job group of that id", "pass --out")),
    Case("status-unknown-id", lambda c: ["status", "nope", "--out", str(c.scratch)],
         ("'nope': no pipeline, sweep or job group of that id",)),
    Case("collect-dest-is-a-file", lambda c: ["collect", c.sweep_id, "--dest", str(c.file("results", "x")),
                                              "--out", str(c.scratch)],
         ("results is a file, not a directory",), setup=make_sweep),
    Case("sweep-submission-rejected", lambda c: [
         "launch-sweep", "--sweep", str(c.file("s.yaml", SWEEP)), "--agents", "1", "--data", str(c.data), "--out",
         str(c.scratch), "--cluster", "slurm", "--cluster-set", "partition=no-such-partition"],
         ("submitting the agent job failed", "no-such-partition"), slurm=True, fresh=True),
    # -- other commands ---------------------------------------------------------------------------------
    Case("fetch-weights-unknown-model", lambda c: ["fetch-weights", "--models", "vgg16"], ("unknown model",)),
    Case("demo-data-into-a-file", lambda c: ["make-demo-data", str(c.file("taken", "x") / "demo")],
         ("taken is a file, not a directory",)),
]


# ---- the harness ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from inat.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("bad-input") / "data", n_train_per_class=4, n_test_per_class=2)


def whole_caches(ctx: Ctx, new_files: set[str]) -> set[str]:
    """Those of `new_files` that make up finished decoded-image caches (inat.data.cache) and their lock
    files. `train` builds the cache before its first epoch; a finished cache is a shared, reusable
    result (renamed into place whole), not something the failed run half-wrote."""
    from inat.data.cache import MANIFEST, open_cache

    whole = set()
    for name in new_files:
        path = Path(name)
        if not path.is_relative_to(ctx.tmp) or "cache" not in path.relative_to(ctx.tmp).parts:
            continue
        if path.name.endswith("px.lock") and path.stat().st_size == 0:
            whole.add(name)
        elif (path.parent / MANIFEST).is_file():
            try:
                open_cache(path.parent)
            except Exception:  # noqa: BLE001 - any failure means it is not a whole cache
                continue
            whole.add(name)
    return whole


def snapshot(*roots: Path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Every file (size, mtime) and folder under `roots`, by absolute path."""
    files, dirs = {}, set()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_dir():
                dirs.add(str(path))
            else:
                st = path.lstat()
                files[str(path)] = (st.st_size, st.st_mtime_ns)
    return files, dirs


@pytest.fixture
def ctx(tmp_path, small_data, trained_run):
    c = Ctx(tmp_path, small_data, trained_run)  # shared, read-only: rows copy what they change
    yield c
    for where in reversed(c.mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    if case.slurm:
        marks.append(pytest.mark.slurm)
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(case, id=case.id, marks=marks)


def test_the_table_is_big_enough():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    print(f"{len(CASES)} bad-input cases: {sum(not c.ok for c in CASES)} rejected, {sum(c.ok for c in CASES)} accepted")


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, ctx: Ctx):
    if case.mount:
        require(_can_mount(), "mounting a tmpfs needs root (mount -t tmpfs)")
    if case.slurm:
        from jobs.slurm.executors import slurm_available

        ok, why = slurm_available(timeout=10)
        require(ok, f"needs a running Slurm cluster ({why})")
    if case.setup:
        case.setup(ctx)
    args = case.args(ctx)
    env = {**ENV, **(case.env(ctx) if case.env else {})}
    watched = (ctx.tmp, *ctx.shared)  # the row's folder, and the shared dataset and run it may be using
    before = snapshot(*watched)
    if case.fresh:
        result = run_cli(*args, env=env, cwd=ctx.tmp, timeout=300)
    else:
        result = cli(*args, env=env, cwd=ctx.tmp)
    after = snapshot(*watched)
    shown = f"$ inat-jobs {' '.join(args)}\n--- exit {result.returncode}; stderr:\n{result.stderr}"

    assert "Traceback" not in result.stderr, shown
    assert not [p for p in after[0] if ".tmp" in Path(p).name], shown  # no temp file survives
    if case.ok:
        assert result.returncode == 0, shown
        assert "inat-jobs: error" not in result.stderr, shown
        for fragment in case.expect:
            assert fragment in result.stderr, shown
    else:
        assert result.returncode == 2, shown
        lines = result.stderr.rstrip("\n").splitlines()
        assert lines and lines[-1].startswith("inat-jobs: error: "), shown
        if case.strict:
            assert len(lines) == 1, shown
        else:  # progress the run logged before it failed, then the one error line
            assert all(line.startswith(("INFO: ", "WARNING: ")) for line in lines[:-1]), shown
        for fragment in case.expect:
            assert fragment in lines[-1], shown
        # Nothing half-written: no file created, changed or removed (but a finished image cache);
        # no run or sweep directory left.
        new_files = set(after[0]) - set(before[0])
        caches = whole_caches(ctx, new_files)
        assert {k: v for k, v in after[0].items() if k not in caches} == before[0], shown
        new_dirs = {d for d in after[1] - before[1] if not any(f.startswith(d + "/") for f in caches)}
        allowed = {str(p) for p in (ctx.scratch, ctx.scratch / "runs", ctx.scratch / "sweeps",
                                    ctx.scratch / "jobs")}  # empty layout folders
        allowed |= {str(m / "runs") for m in ctx.mounts}
        assert new_dirs <= allowed, (new_dirs, shown)
    if case.check:
        case.check(ctx)

"""Offline W&B runs reach W&B while the jobs run: wandb-osh's signals, and the syncer that reads them.

Compute nodes log to W&B offline (`inat.tracking`). After each epoch and when its run ends, a
training process signals with wandb-osh's own hook (`TriggerWandbSyncHook`): a file
`<hash>.command` in SCRATCH/wandb-osh/ (`layout.sync_dir`) that holds the path of the run's offline
directory, RUN/wandb/offline-run-*. On a login node, which reaches W&B, `inat-jobs sync` runs
`Syncer`: for each command file, `wandb sync --include-synced DIR`.

wandb-osh's own syncer (`wandb-osh --command-dir SCRATCH/wandb-osh`) reads the same files and does
for a quiet night; this one is written for the nights that are not (wandb-osh 1.2.2, wandb 0.31):
  - it deletes a command file before the sync, not after it, so the signal of a run's last epoch,
    written while the previous one uploads, is kept for the next pass instead of deleted unseen;
  - a failed sync (an exit status other than 0, a time-out, "Not authenticated.") is signalled
    again and retried after 30 s, 60 s, ... up to 10 minutes; wandb-osh retries only time-outs,
    and deletes the file it re-wrote in the same pass;
  - `--include-synced`: `wandb sync` skips a run that carries its `.wandb.synced` marker, so
    every sync after the first one would upload nothing of the later epochs;
  - it takes only the runs it is asked to (`accept`, e.g. one sweep's) and can stop after a pass.

A signal never stops training: a command directory that cannot be written costs one warning per run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import layout
from .errors import InatError
from .fsutil import make_dir, os_reason, write_text

log = logging.getLogger("inat")
RETRY_S = 30.0  # the first retry of a failed sync; each further failure doubles it
MAX_RETRY_S = 600.0
TIMEOUT_S = 120.0  # one `wandb sync` call, as wandb-osh's default
INSTALL_HINT = "install it with: pip install -e '.[sync]'"


def available() -> bool:
    """Whether wandb-osh (the `sync` extra) is installed."""
    return importlib.util.find_spec("wandb_osh") is not None


def command_dir_for(run_dir: str | os.PathLike) -> Path | None:
    """Where a run's signals go: the wandb-osh directory of the scratch root it is in (None elsewhere)."""
    root = layout.root_of_run(Path(run_dir).resolve())
    return layout.sync_dir(root) if root is not None else None


class Signal:
    """'This offline run has new data', told to the syncer through wandb-osh. Never raises."""

    def __init__(self, offline_dir: Path, command_dir: Path):
        self.offline_dir = Path(offline_dir)
        self.command_dir = Path(command_dir)
        self.sent = 0
        self._hook = None
        self._warned = False

    def __call__(self) -> bool:
        try:
            if self._hook is None:
                from wandb_osh.hooks import TriggerWandbSyncHook  # lazy: wandb-osh's hook imports W&B

                # Its INFO banner and its per-epoch "command file still exists" warning (no syncer
                # running yet, the normal case until someone starts one) would fill every job log.
                logging.getLogger("wandb_osh").setLevel(logging.ERROR)
                self._hook = TriggerWandbSyncHook(self.command_dir)
            self._hook(self.offline_dir)
        except Exception as exc:  # noqa: BLE001 - the run trains on; only live syncing is lost
            if not self._warned:
                why = os_reason(exc, self.command_dir) if isinstance(exc, OSError) else str(exc)
                log.warning("W&B: no live sync for this run, cannot signal in %s: %s; training goes on, "
                            "upload the run later with `wandb sync %s`", self.command_dir, why, self.offline_dir)
                self._warned = True
            return False
        self.sent += 1
        return True


# ---- the syncing side, on a node that reaches W&B ----------------------------------------------------


@dataclass
class SyncPass:
    """What one pass over the command files did."""

    synced: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)  # failed before; their retry is not due yet


def find_wandb() -> list[str]:
    """The `wandb` command: on PATH, else beside this interpreter (a venv not activated)."""
    found = shutil.which("wandb") or shutil.which("wandb", path=str(Path(sys.executable).parent))
    if not found:
        raise InatError(f"no `wandb` command on PATH nor beside {sys.executable}; install wandb there")
    return [found]


class Syncer:
    """Reads wandb-osh command files in `command_dir` and uploads the runs they name (see module doc).

    `accept(target)` picks the runs this syncer handles; the command files of the others stay."""

    def __init__(self, command_dir: Path, *, wandb: list[str] | None = None,
                 accept: Callable[[Path], bool] | None = None, timeout: float = TIMEOUT_S,
                 retry_s: float = RETRY_S, max_retry_s: float = MAX_RETRY_S):
        self.command_dir = Path(command_dir)
        check_command_dir(self.command_dir)
        self.wandb = wandb or find_wandb()
        self.accept = accept or (lambda target: True)
        self.timeout = timeout
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self._failures: dict[Path, int] = {}
        self._next_try: dict[Path, float] = {}

    def run_pass(self) -> SyncPass:
        done = SyncPass()
        for command in sorted(self.command_dir.glob("*.command")):
            try:
                text = command.read_text(encoding="utf-8").strip()
            except FileNotFoundError:  # another syncer took it
                continue
            if not text:  # wandb-osh's hook creates the file, then writes it: come back next pass
                continue
            target = Path(text)
            if not self.accept(target):
                continue
            if time.monotonic() < self._next_try.get(target, 0.0):
                done.waiting.append(target)
                continue
            # Taken before the upload: a signal written during it is a newer one, for the next pass.
            command.unlink(missing_ok=True)
            if not target.is_dir():
                log.warning("W&B: %s names %s, which no longer exists; dropped", command.name, target)
                continue
            error = self.sync(target)
            if error is None:
                self._failures.pop(target, None)
                self._next_try.pop(target, None)
                done.synced.append(target)
                log.info("W&B: synced %s", target)
                continue
            failures = self._failures[target] = self._failures.get(target, 0) + 1
            delay = min(self.retry_s * 2 ** (failures - 1), self.max_retry_s)
            self._next_try[target] = time.monotonic() + delay
            if not command.exists():  # signal it again, so that a restarted syncer retries it too
                write_text(command, str(target))
            done.failed.append(target)
            log.warning("W&B: sync of %s failed (%s); retrying in %.0f s", target, error, delay)
        return done

    def command(self, target: Path) -> list[str]:
        return [*self.wandb, "sync", "--include-synced", str(target)]

    def sync(self, target: Path) -> str | None:
        """`wandb sync` one offline run directory; None if it went through, else why not."""
        command = self.command(target)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"no answer within {self.timeout:.0f} s"
        except OSError as exc:
            return f"cannot run {command[0]}: {exc.strerror or exc}"
        output = f"{proc.stdout}\n{proc.stderr}"
        if proc.returncode != 0:
            last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "")
            return f"exit status {proc.returncode}" + (f": {last}" if last else "")
        if "Not authenticated" in output:  # wandb sync says so and exits 0
            return "not logged in to W&B: run `wandb login` or set WANDB_API_KEY"
        return None

    def loop(self, interval: float, passes: int | None = None) -> SyncPass:
        """Pass after pass, `interval` seconds apart, until interrupted (or after `passes` passes)."""
        done, count = SyncPass(), 0
        while True:
            result = self.run_pass()
            done.synced += result.synced
            done.failed += result.failed
            done.waiting = result.waiting
            count += 1
            if passes is not None and count >= passes:
                return done
            time.sleep(interval)


def check_command_dir(path: Path) -> None:
    """The command directory exists (created if not) and this process may delete and write files in it."""
    if path.exists() and not path.is_dir():
        raise InatError(f"{path}: not a directory; it is where training leaves wandb-osh's command files "
                        "(move the file away)")
    make_dir(path, "--out")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InatError(f"{path}: not writable by this user; the syncer deletes the command files there "
                        "(run it as the user who runs the jobs)")

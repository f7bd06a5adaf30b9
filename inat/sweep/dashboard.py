"""A live, read-only view of a local-backend sweep: optuna-dashboard over the sweep's Optuna study.

optuna-dashboard (Optuna's own web UI) reads the study the agents write, while they write it: the
journal file or the database of `inat.sweep.study.storage_for`, re-read on every request. It has no
read-only mode, so its WSGI app is wrapped to refuse every request but GET and HEAD: the UI's
writes (delete or rename the study, tell a trial, edit notes or user attributes) would change the
sweep under its agents. The standard library's threaded WSGI server serves it, bound before
anything is printed, so that a port in use is a one-line error. Each trial's user attributes, set by
the agent (`inat.sweep.local`), say where its run directory is, its epochs, state and W&B run.
optuna-dashboard is imported when a dashboard is made, not with this module.
"""

from __future__ import annotations

import errno
import getpass
import json
import logging
import os
import platform
from socketserver import ThreadingMixIn
from typing import NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import InatError
from .store import Sweep
from .study import storage_for

log = logging.getLogger("inat")
READ_METHODS = ("GET", "HEAD")
# Hosts a tunnel reaches as "localhost" on the machine that serves (every address, or loopback).
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "")


class Dashboard(NamedTuple):
    server: WSGIServer  # bound and listening; serve_forever() serves it
    url: str  # the sweep's study page
    tunnel: str  # the ssh command that brings the port to a laptop
    laptop_url: str  # the study page there, through that tunnel


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    # The page fetches several API routes at once and polls them: one slow read must not stall the rest.
    daemon_threads = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        # The page polls every few seconds: a line per request would bury what the command printed.
        log.debug("dashboard: %s", format % args)


def read_only(app):
    """`app` answering GET and HEAD only; any other method gets 405 and a reason the page shows."""

    def guarded(environ, start_response):
        if environ.get("REQUEST_METHOD", "GET").upper() in READ_METHODS:
            return app(environ, start_response)
        # optuna-dashboard's page shows an API error's "reason" in its message bar.
        body = json.dumps({"reason": "this dashboard is read-only: the sweep's agents own the study"}).encode()
        start_response("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", "GET, HEAD"),
                                                  ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def make_dashboard(sweep: Sweep, host: str = "127.0.0.1", port: int = 8080) -> Dashboard:
    """optuna-dashboard on `sweep`'s study, bound to host:port (0: any free port), not yet serving."""
    try:
        import optuna_dashboard  # lazy: optuna-dashboard imports Optuna and its web framework
    except ImportError as exc:
        raise InatError(f"the dashboard needs optuna-dashboard ({exc}): pip install -e '.[dashboard]'") from None

    if sweep.backend != "local":
        raise InatError(f"sweep {sweep.id} runs on the {sweep.backend} backend, which has no Optuna study")
    journal = sweep.dir / "optuna.journal"
    if not sweep.storage and not journal.is_file():  # opening it would create an empty one
        raise InatError(f"sweep {sweep.id}: no Optuna study: {journal} is missing")
    try:
        storage = storage_for(sweep)
        study_id = storage.get_study_id_from_name(sweep.id)
    except InatError:  # a damaged journal, already said in one line
        raise
    except KeyError:
        raise InatError(f"sweep {sweep.id}: its storage holds no study of that name") from None
    except Exception as exc:  # a database that is down or refuses us; the URL may hold a password
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InatError(f"sweep {sweep.id}: cannot read its Optuna database ({first})") from None
    app = read_only(optuna_dashboard.wsgi(storage))
    try:
        server = make_server(host, port, app, server_class=_ThreadedServer, handler_class=_Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InatError(f"--port {port}: already in use on {host}; pick another port with --port "
                            "(0 takes any free one)") from None
        raise InatError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    bound_port = server.server_address[1]
    shown = platform.node() if host in ("0.0.0.0", "") else host
    page = f"/dashboard/studies/{study_id}"
    return Dashboard(server, f"http://{shown}:{bound_port}{page}", tunnel_command(host, bound_port),
                     f"http://localhost:{bound_port}{page}")


def tunnel_command(host: str, port: int) -> str:
    """The ssh line a laptop runs to see host:port of this machine at its own localhost:port."""
    target = "localhost" if host in _LOCAL_HOSTS else host
    return f"ssh -N -L {port}:{target}:{port} {_user()}@{platform.node()}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (some containers)
        return os.environ.get("USER", "USER")

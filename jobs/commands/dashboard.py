"""The dashboard command: a sweep, live in a browser. The serving is in inat.sweep.dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inat import layout
from inat.sweep import load_sweep, wandb_backend
from inat.sweep.dashboard import make_dashboard

from ..app import app
from .options import OutOpt


@app.command()
def dashboard(
    sweep_id: str = typer.Argument(..., help="Sweep id, as printed by launch-sweep."),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535, help="Port to serve on (0: any free one)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on. The page has no login: keep it on localhost and "
        "reach it through ssh; 0.0.0.0 shows the sweep to anyone who reaches this machine."
    ),
    out: Optional[Path] = OutOpt,
) -> None:
    """Serve optuna-dashboard on a sweep's Optuna study, live and read-only, until Ctrl-C.

    It shows every trial as the agents write it: state, values per epoch, parameters, plots, and as
    user attributes the run directory, epochs, state and W&B run name. Run it where the scratch
    storage (or the sweep's --storage database) is, e.g. on the login node; it prints the URL and the
    ssh line that forwards the port to a laptop. For a --backend wandb sweep it prints the sweep's
    page on W&B, which is that sweep's dashboard.

    \b
    Example, on the login node:
        inat-jobs dashboard 20261202-014057-a1b2 --port 8080
    then on the laptop, and open the page it printed:
        ssh -N -L 8080:localhost:8080 alice@login1
    """
    sw = load_sweep(layout.scratch_root(out), sweep_id)
    if sw.backend == "wandb":
        typer.echo(f"sweep {sw.id} runs on W&B, whose sweep page is its dashboard: {wandb_backend.sweep_page(sw)}")
        return
    board = make_dashboard(sw, host, port)
    typer.echo(f"dashboard of sweep {sw.id} (read-only, live): {board.url}")
    typer.echo(f"from a laptop: {board.tunnel}   then open {board.laptop_url}")
    typer.echo("stop with Ctrl-C")
    try:
        board.server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("dashboard stopped")
    finally:
        board.server.server_close()

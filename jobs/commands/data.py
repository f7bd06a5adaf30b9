"""Data commands: cache-data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inat import layout
from inat.errors import InatError

from ..app import app


@app.command("cache-data")
def cache_data(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root with train/<class>/ and val/<class>/."),
    image_size: str = typer.Option(
        ..., "--image-size", help="Side in pixels the images are resized to: the model's input size (e.g. 128, 224)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Scratch root; the cache goes to OUT/cache/ (default: $INAT_SCRATCH, else "
        "$SCRATCH/inat, else ./scratch)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if an up-to-date cache exists."),
) -> None:
    """Decode and resize every image once into SCRATCH/cache/, which `train` then reads instead of the JPEGs."""
    from inat.data.cache import describe  # lazy: numpy
    from inat.data.cache_build import build_cache, check_image_size  # lazy: numpy

    size = check_image_size(image_size)
    if not data.exists():
        raise InatError(f"--data {data}: directory not found")
    path = build_cache(data, size, layout.cache_dir(layout.scratch_root(out)), force=force)
    typer.echo(f"cache: {describe(path)}")

"""Keep TensorFlow's start-up chatter off stderr, so that a failing command prints one line there.

`TF_CPP_MIN_LOG_LEVEL=2` silences TensorFlow's C++ INFO logs, but TensorFlow 2.21 still prints these
while its shared libraries load, before its own logging is set up and whatever that variable says:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795659371.715394    2384 port.cc:153] oneDNN custom operations are on. ...

(twice: two libraries print them). `install()` wraps the first `import tensorflow` in this process,
whichever module triggers it, and drops exactly those lines from what the import wrote to file
descriptor 2. Anything else the import writes (a real error, a Python warning) is passed on.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile
from typing import Iterator

CHATTER = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} \S+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*"
)


def install() -> None:
    """Filter the chatter of the first `import tensorflow`, unless the user asked for C++ logs."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("0", "1") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import only; the rest of the process is left alone
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        real = loader.exec_module

        def exec_module(module):
            del loader.exec_module  # back to the class's own method
            with filtered_stderr():
                real(module)

        loader.exec_module = exec_module  # on this loader instance only
        return spec


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block; replay it without the chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True)
                    if not CHATTER.fullmatch(line.rstrip(b"\r\n"))]
            if kept:
                os.write(2, b"".join(kept))

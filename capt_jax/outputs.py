"""Where a command will write, checked before it does any work.

A workdir or `--out` that is a file, or that cannot be created, would otherwise fail with an OSError after the
model has loaded or a run has trained. Each check creates nothing that it leaves behind, so a command that then
fails for another reason leaves no stray folder. Remote paths (gs://...) are left to the run itself.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from capt_jax.errors import ConfigError


def check_output_dir(path: str | os.PathLike, name: str) -> None:
    """`path` (named `name` in the message: a config key or a flag) is a folder that can be written, or one that
    can be created."""
    if "://" in str(path):
        return
    folder = Path(path).expanduser().absolute()
    try:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{name}={str(path)!r}: is a file, not a folder")
        _check_writable(folder, path, name)
    except OSError as e:  # e.g. a parent that cannot be listed
        raise ConfigError(f"{name}={str(path)!r}: cannot be used ({e.strerror or e})") from None


def check_output_file(path: str | os.PathLike, name: str) -> None:
    """`path` is a file that can be written: not a folder, in a folder that exists or can be created."""
    file = Path(path).expanduser().absolute()
    try:
        if file.is_dir():
            raise ConfigError(f"{name}={str(path)!r}: is a folder; give the file to write")
        _check_writable(file.parent, path, name)
    except OSError as e:
        raise ConfigError(f"{name}={str(path)!r}: cannot be used ({e.strerror or e})") from None


def _check_writable(folder: Path, path: str | os.PathLike, name: str) -> None:
    """Try what writing will do: make (and remove) a uniquely named folder in the deepest folder that exists, so
    that processes starting at once on one new workdir never probe the same name.

    Asking os.access is not enough: it says yes to root on a read-only mount or under /proc."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{name}={str(path)!r}: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".capt_jax-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{name}={str(path)!r}: cannot write in {existing} ({e.strerror})") from None

"""Where a command will write, checked before it does any work.

A workdir or `--out` that is a file, or that cannot be created, would otherwise fail with an OSError after the
model has loaded or a run has trained. Each check creates nothing that it leaves behind, so a command that then
fails for another reason leaves no stray folder. Remote paths (gs://...) are left to the run itself.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from capt_jax.errors import ConfigError


def cache_root() -> Path:
    """Where what is built once lives (converted models, downloaded data): $CAPT_JAX_CACHE, else ~/.cache/capt_jax."""
    return Path(os.environ.get("CAPT_JAX_CACHE", Path.home() / ".cache" / "capt_jax"))


def built_once(folder: Path, finished: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """`folder`, made by `build(folder)` unless `finished(folder)`. Several processes may start at once (parallel
    test workers, a launcher's hosts): one builds under a lock, the others wait on it and then find the folder,
    so none replaces a folder another is reading."""
    if finished(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not finished(folder):
            build(folder)
    return folder


def check_output_dir(path: str | os.PathLike, name: str) -> None:
    """`path` (named `name` in the message: a config key or a flag) is a folder that can be written, or one that
    can be created."""
    if "://" in str(path):
        return
    folder = Path(path).expanduser().absolute()
    _check_target(path, name, folder, lambda: folder.exists() and not folder.is_dir(), "is a file, not a folder")


def check_output_file(path: str | os.PathLike, name: str) -> None:
    """`path` is a file that can be written: not a folder, in a folder that exists or can be created."""
    file = Path(path).expanduser().absolute()
    _check_target(path, name, file.parent, file.is_dir, "is a folder; give the file to write")


def _check_target(
    path: str | os.PathLike, name: str, folder: Path, is_wrong_kind: Callable[[], bool], wrong_kind: str
) -> None:
    """Try what writing will do: make (and remove) a uniquely named folder in the deepest part of `folder` that
    exists, so that processes starting at once on one new workdir never probe the same name. Any OSError on the
    way (a parent that cannot be listed) is an error line too.

    Asking os.access is not enough: it says yes to root on a read-only mount or under /proc."""
    what = f"{name}={str(path)!r}"
    try:
        if is_wrong_kind():
            raise ConfigError(f"{what}: {wrong_kind}")
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{what}: {existing} is a file, not a folder")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".capt_jax-probe-", dir=existing))
        except OSError as e:
            raise ConfigError(f"{what}: cannot write in {existing} ({e.strerror})") from None
    except OSError as e:
        raise ConfigError(f"{what}: cannot be used ({e.strerror or e})") from None

"""The CLadder v1 release with its story tables, downloaded once from the authors' GitHub repository.

The exact abstraction needs every phrasing of every variable value (the repository's `assets/stories/*.yml`),
which no copy on the Hugging Face hub holds (it has prompts and CSV exports, not the v1 question files). So the
`download` source fetches one pinned archive of causalNLP/cladder, whose `data/cladder-v1.zip` holds the
question files and the causal models, and unpacks those and the stories into the layout `load_cladder` reads.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from capt_jax.errors import MissingFileError
from capt_jax.outputs import built_once, cache_root

from .cladder import MODEL_FILES, QUESTION_FILES

RELEASE_COMMIT = "3d2d1169b4b939a09048a6a75956c8972a93cc38"  # causalNLP/cladder main, 2024-05-29
RELEASE_URL = f"https://github.com/causalNLP/cladder/archive/{RELEASE_COMMIT}.zip"
RELEASE_FILES = frozenset(n for names in QUESTION_FILES.values() for n in names if n.startswith("cladder-v1")) | {
    MODEL_FILES[0]
}
OFFLINE_HINT = (
    "without internet, set data.data_dir to a copy of the v1 release: the cladder-v1-q-*.json files, "
    "cladder-v1-meta-models.json, and the repository's assets/stories folder beside them as stories/"
)


COMPLETE = ".complete"  # written last: a folder without it is an unfinished one


def downloaded_release(url: str = RELEASE_URL) -> Path:
    """The unpacked release under the cache, downloaded on first use."""
    folder = cache_root() / "cladder" / RELEASE_COMMIT[:12]
    try:
        return built_once(folder, lambda f: (f / COMPLETE).is_file(), lambda f: _download_and_unpack(url, f))
    except OSError as e:  # the cache cannot be written, or the disk filled up
        raise MissingFileError(
            f"cannot write CLadder into the cache at {folder} ({e.strerror or e}); set CAPT_JAX_CACHE to a "
            "writable folder"
        ) from None


def _download_and_unpack(url: str, folder: Path) -> None:
    for stale in folder.parent.glob(".staging-*"):  # left by a process killed here; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=folder.parent) as staging:
        archive = Path(staging) / "repository.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc="downloading CLadder") as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            if size is not None and archive.stat().st_size != size:
                raise OSError(f"the connection closed after {archive.stat().st_size} of {size} bytes")
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, cut connections
            raise MissingFileError(f"cannot download CLadder from {url} ({e}); {OFFLINE_HINT}") from None
        unpacked = Path(staging) / "release"
        unpack_release(archive, unpacked)
        (unpacked / COMPLETE).write_text(url + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(unpacked, folder)


def unpack_release(archive: Path, out: Path) -> None:
    """The question and model files (top level or inside data/cladder-v1.zip), `stories/` and
    `anticommonsense.yml` of a repository archive, flat in `out`."""
    (out / "stories").mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as repository:
            release = None
            for info in repository.infolist():
                path = PurePosixPath(info.filename)  # written by base name only: no member lands outside `out`
                inside = path.parts[1:]  # below the archive's top folder, cladder-<commit>/
                if inside[:2] == ("assets", "stories") and path.suffix == ".yml":
                    (out / "stories" / path.name).write_bytes(repository.read(info))
                elif inside == ("assets", "anticommonsense.yml") or path.name in RELEASE_FILES:
                    (out / path.name).write_bytes(repository.read(info))
                elif path.name == "cladder-v1.zip":
                    release = repository.read(info)
            if release is not None:  # last, so the release's own files win over loose copies of them
                with zipfile.ZipFile(io.BytesIO(release)) as files:
                    for member in files.infolist():
                        name = PurePosixPath(member.filename).name
                        if name in RELEASE_FILES:
                            (out / name).write_bytes(files.read(member))
    except zipfile.BadZipFile as e:
        raise MissingFileError(f"{archive}: not the CLadder repository archive ({e}); {OFFLINE_HINT}") from None
    missing = [variant for variant, names in QUESTION_FILES.items() if not any((out / n).is_file() for n in names)] + [
        name for name in (MODEL_FILES[0], "anticommonsense.yml") if not (out / name).is_file()
    ]
    if missing or not any((out / "stories").iterdir()):
        raise MissingFileError(f"{archive}: the CLadder archive lacks {missing or ['assets/stories']}; {OFFLINE_HINT}")

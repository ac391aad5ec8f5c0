"""Per-step metrics to {workdir}/metrics.jsonl and TensorBoard event files (process 0 only).

The workdir may be local or an object store (gs://, through etils epath + gcsfs). Objects cannot be appended
to, so there metrics.jsonl is rewritten at most every REMOTE_FLUSH_SECONDS and on flush() (train flushes with
every checkpoint, so a resumed run never misses a step); local files are appended to line by line.
TensorBoard events on gs:// go through tensorboardX's own GCS writer, which needs google-cloud-storage.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from etils import epath

REMOTE_FLUSH_SECONDS = 30.0


def is_remote(path: str | epath.Path) -> bool:
    return "://" in str(path)


def tensorboard_writer(folder: epath.Path) -> Any:
    """A tensorboardX SummaryWriter, or None (with a note) for gs:// without google-cloud-storage."""
    from tensorboardX import SummaryWriter

    if is_remote(folder):
        try:
            import google.cloud.storage  # noqa: F401  (tensorboardX writes gs:// through it)
        except ImportError:
            print(
                f"note: no TensorBoard events in {folder}: writing them to gs:// needs `pip install "
                "google-cloud-storage`; metrics.jsonl is written as usual",
                file=sys.stderr,
            )
            return None
    return SummaryWriter(str(folder))


def lines_up_to(text: str, resume_step: int) -> list[str]:
    """The log lines a resumed run keeps: those up to its checkpoint's step, since it replays the rest.

    A line that does not parse is a write torn by a hard kill (or a full disk); it is dropped, not fatal.
    """
    kept = []
    for line in text.splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            continue
        if step <= resume_step:
            kept.append(line)
    return kept


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        self.file = path / "metrics.jsonl"
        self.remote = is_remote(workdir)
        self.lines = []
        if self.file.exists():
            self.lines = lines_up_to(self.file.read_text(), resume_step)
            self.file.write_text("".join(line + "\n" for line in self.lines))
        self.jsonl = None if self.remote else self.file.open("a")
        self.flushed = time.monotonic()
        self.tensorboard = tensorboard_writer(path / "tensorboard")

    def write(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(metrics)
        if self.remote:
            self.lines.append(line)
            if time.monotonic() - self.flushed > REMOTE_FLUSH_SECONDS:
                self.flush()
        else:
            self.jsonl.write(line + "\n")
            self.jsonl.flush()
        if self.tensorboard is not None:
            step = int(metrics["step"])
            for key, value in metrics.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"train/{key}", value, step)

    def flush(self) -> None:
        """Make everything written so far durable (local lines already are)."""
        if not self.enabled:
            return
        if self.remote:
            self.file.write_text("".join(line + "\n" for line in self.lines))
            self.flushed = time.monotonic()
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

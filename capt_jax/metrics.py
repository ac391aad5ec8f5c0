"""Per-step metrics to {workdir}/metrics.jsonl and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        self.file = path / "metrics.jsonl"
        # A resumed run replays the steps after its checkpoint: drop their old lines so the log has each step once.
        if self.file.exists():
            kept = [
                line
                for line in self.file.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.file.write_text("".join(line + "\n" for line in kept))
        self.jsonl = open(self.file, "a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(path / "tensorboard"))

    def write(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(metrics) + "\n")
        self.jsonl.flush()
        step = int(metrics["step"])
        for key, value in metrics.items():
            if key != "step":
                self.tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()

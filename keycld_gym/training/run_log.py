"""A training run's logs: one CSV per phase (`OUT/log_<phase>.csv`) and TensorBoard (`OUT/tb`)."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLog:
    """Appends each logged step to its phase's CSV and to TensorBoard (opened on first use)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._tb: SummaryWriter | None = None

    def write(self, phase: str, step: int, elapsed: float, values: dict[str, float], global_step: int) -> None:
        """One row: the phase's step, the run's wall time so far and `values`; TensorBoard at `global_step`."""
        path = self.out / f"log_{phase}.csv"
        row = {"phase": phase, "step": step, "elapsed_s": round(elapsed, 1), **values}
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is None:
            self._tb = SummaryWriter(str(self.out / "tb"))
        for k, v in values.items():
            self._tb.add_scalar(f"{phase}/{k}", v, global_step)

    def close(self) -> None:
        """Flush and close TensorBoard's file."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

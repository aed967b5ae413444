"""A run's records: ``log.jsonl``, TensorBoard events, ``curves.png``, and the progress lines of a run.

On resume the log is cut back to the checkpoint: the lines an interrupted part wrote after it are logged
again by the replay, so an interrupted and resumed run ends with the same log as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from fpn.engine.run_folder import writing
from fpn.io import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)


class RunLog:
    """``log.jsonl``, TensorBoard events and ``curves.png`` of a run (the main process only).

    ``resume_from``: the checkpoint's iteration (None for a fresh run); records after it are dropped, and so
    is an evaluation at it when ``replay_eval`` (the resumed part evaluates that iteration again).
    """

    def __init__(self, run_dir: Path, *, resume_from: int | None, replay_eval: bool = False) -> None:
        self.path = run_dir / "log.jsonl"
        self.curves = run_dir / "curves.png"
        self.records: list[dict[str, Any]] = []
        if resume_from is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a killed run
                    record = json.loads(line)
                    iteration = record.get("iteration", 0)
                    again = replay_eval and record.get("type") == "eval" and iteration == resume_from
                    if iteration <= resume_from and not again:
                        self.records.append(record)
        with writing(self.path, "the training log"):
            atomic_write_text("".join(json.dumps(r) + "\n" for r in self.records), self.path)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir), purge_step=None if resume_from is None else resume_from + 1)
        except ImportError:  # tensorboard is a dependency, but a stripped install should still train
            logger.warning("tensorboard is not installed: no event files")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with writing(self.path, "the training log"), self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        step = record["iteration"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("iteration", "type"):
                prefix = "eval" if record["type"] == "eval" else "train"
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def plot(self) -> None:
        """Losses and learning rate against iterations, and AP where there were evaluations."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps = [r for r in self.records if r["type"] == "train"]
        evals = [r for r in self.records if r["type"] == "eval" and r.get("AP") is not None]
        figure = Figure(figsize=(13, 3.8), layout="constrained")
        FigureCanvasAgg(figure)
        ax_loss, ax_lr, ax_ap = figure.subplots(1, 3)
        its = [r["iteration"] for r in steps]
        point = "o" if len(steps) == 1 else None  # a line through one point would draw nothing
        for key in [k for k in (steps[0] if steps else {}) if k.startswith("loss")]:
            style = {"label": key, "lw": 2 if key == "loss" else 1, "marker": point}
            ax_loss.plot(its, [r.get(key, math.nan) for r in steps], **style)
        ax_loss.set(title="training losses", xlabel="iteration", yscale="log" if steps else "linear")
        if steps:
            ax_loss.legend(fontsize=7)
        ax_lr.plot(its, [r["lr"] for r in steps], marker=point)
        ax_lr.set(title="learning rate", xlabel="iteration")
        for key in ("AP", "AP50", "APs", "APl"):
            ax_ap.plot([r["iteration"] for r in evals], [r.get(key) for r in evals], marker="o", label=key)
        ax_ap.set(title="val AP", xlabel="iteration")
        if evals:
            ax_ap.legend(fontsize=7)
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=90)
        with writing(self.curves, "the training curves"):
            atomic_write_bytes(image.getvalue(), self.curves)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(int(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(record: dict[str, Any], total: int | None, budget: float | None) -> str:
    """One line per logged step, the same for every kind of budget.

    ``iter 20/100: loss 1.2345, lr 2.00e-02, elapsed 0:40, eta 1:23``. A minutes-only run has no iteration
    count, so its total is estimated from the speed so far (``20/~150``) and its eta is the time left.
    """
    iteration, elapsed, per_iter = record["iteration"], record["elapsed"], record["sec_per_iter"]
    left = [per_iter * (total - iteration)] if total is not None else []
    if budget is not None:
        left.append(budget - elapsed)
    eta = min(left) if left else math.inf
    of = str(total) if total is not None else f"~{iteration + int(eta / per_iter)}" if per_iter > 0 else "?"
    return (
        f"iter {iteration}/{of}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
        f"elapsed {clock(elapsed)}, eta {clock(eta) if math.isfinite(eta) else '?'}"
    )

"""Live progress for `dyrank run`: each training job's step / total, loss and ETA, then the sweep's ranks done.

Trainer actors already forward every step's row through a `step_sink` (orchestrator/progress.py, built for
studies); here each training job gets a sink on one ProgressBoard, and a driver thread drains the board twice a
second into tqdm bars on stderr (and plain lines into `--log-file`). The sweep bar advances on the pipeline's
"eval" events. Event lines (run id, each rank's score) still go to stdout, above the bars.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

import ray
from tqdm.auto import tqdm

from orchestrator.progress import ProgressBoard, StepSink

LOG_EVERY_FRACTION = 20  # --log-file gets about 20 lines per training job, not one per step


class TeeSink:
    """Several step sinks as one (picklable: it travels to the trainer actor); True from any stops training."""

    def __init__(self, *sinks):
        self.sinks = [s for s in sinks if s is not None]

    def __call__(self, row: dict) -> bool:
        return any([bool(sink(row)) for sink in self.sinks])  # a list: every sink sees the row


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


def _freeze(bar) -> None:
    """A finished bar keeps its own elapsed time and rate; redrawn later (as the others move, or at close) it
    would otherwise count the time spent waiting for the rest of the pipeline."""
    if bar.disable:  # no bar drawn (quiet, or not a terminal)
        return
    now = bar._time()
    bar._time = lambda: now


class RunProgress:
    """The driver side. `sink(job, total)` is called by the pipeline once Ray is up (the board is an actor);
    `on_event` gets the pipeline's events; `close()` drains what is left and stops the thread."""

    def __init__(self, num_ranks: int | None, lines: dict[str, str], stream: TextIO | None = None,
                 out: TextIO | None = None, log_file: Path | None = None, quiet: bool = False, interval: float = 0.5):
        # sys.stderr / sys.stdout as they are now (not at import: pytest's capture, or a caller, may replace them)
        self.num_ranks, self.lines = num_ranks, lines
        self.stream, self.out = stream or sys.stderr, out or sys.stdout
        self.quiet, self.interval = quiet, interval
        # Bars on a terminal; elsewhere (a CI log, a pipe) the same progress as plain lines, about 20 per job.
        self.bars = not quiet and getattr(stream, "isatty", lambda: False)()
        self.plain = not quiet and not self.bars
        self.log = open(log_file, "a", buffering=1) if log_file else None  # noqa: SIM115  (closed in close())
        self.board, self.thread = None, None
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}  # job -> {"total", "bar", "first" (time, step), "logged"}
        self.sweep_bar, self.ranks_done = None, 0

    def _bar(self, desc: str, total: int, unit: str):
        return tqdm(total=total, desc=desc, unit=unit, file=self.stream, position=len(self.jobs) + (self.sweep_bar is not None),
                    leave=True, dynamic_ncols=True, disable=not self.bars, mininterval=0.2)

    def _write(self, line: str, to_screen: bool = True) -> None:
        """An event line: stdout (above the bars) and the log file."""
        if self.log:
            self.log.write(f"{datetime.now():%H:%M:%S} {line}\n")
        if to_screen and not self.quiet:
            tqdm.write(line, file=self.out)
            self.out.flush()

    def _progress_line(self, line: str) -> None:
        """A progress line where there are no bars (stderr not a terminal), and always in the log file."""
        if self.log:
            self.log.write(f"{datetime.now():%H:%M:%S} {line}\n")
        if self.plain:
            print(line, file=self.stream, flush=True)

    # ---- training jobs -----------------------------------------------------------------------------
    def sink(self, job: str, total: int) -> StepSink:
        with self.lock:
            if self.board is None:
                self.board = ProgressBoard.remote()
                self.thread = threading.Thread(target=self._drain_loop, name="dyrank-progress", daemon=True)
                self.thread.start()
            self.jobs[job] = {"total": total, "bar": self._bar(f"train {job:<12}", total, "step"), "first": None, "logged": 0}
        return StepSink(self.board, job)

    def _drain_loop(self) -> None:
        while not self.stopping.wait(self.interval):
            self._drain()

    def _drain(self) -> None:
        try:
            rows = ray.get(self.board.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001  (the board went with Ray: progress is a view, never a failure)
            return
        with self.lock:
            for job, job_rows in rows.items():
                for row in job_rows:
                    self._step(job, row)

    def _step(self, job: str, row: dict) -> None:
        state = self.jobs[job]
        now, step, total = time.time(), row["step"], state["total"]
        bar = state["bar"]
        if state["first"] is None:
            state["first"] = (now - row.get("step_seconds", 0.0), step - 1)
            # The bar's clock starts at the first step, not at launch: actor start-up and model loading would
            # otherwise read as a minute per step. A resumed job starts from its checkpoint's step.
            bar.reset(total)
            bar.initial = bar.n = bar.last_print_n = step - 1
            bar.start_t = bar.last_print_t = state["first"][0]
        t0, s0 = state["first"]
        eta = (now - t0) / max(step - s0, 1) * (total - step)
        bar.update(step - bar.n)
        bar.set_postfix_str(f"loss {row['train_loss']:.4f}, rank {row['rank']}", refresh=True)
        if step == total:
            _freeze(bar)
        if (self.log or self.plain) and (step - state["logged"] >= max(1, total // LOG_EVERY_FRACTION) or step == total):
            state["logged"] = step
            self._progress_line(f"train {job}: step {step}/{total}, loss {row['train_loss']:.4f}, rank {row['rank']}, "
                                f"ETA {_eta(eta)}")

    # ---- pipeline events ---------------------------------------------------------------------------
    def on_event(self, kind: str, payload: dict) -> None:
        if kind == "trained" and self.board is not None:
            self._drain()  # the last steps before the sweep's bar appears
        if kind in self.lines:
            self._write(self.lines[kind].format(**payload))
        if kind == "trained" and self.sweep_bar is None:
            with self.lock:
                self.sweep_bar = self._bar(f"{'sweep ranks':<18}", self.num_ranks, "rank")
        elif kind == "eval":
            self.ranks_done += 1
            if self.sweep_bar is not None:
                self.sweep_bar.update(1)
                if self.sweep_bar.n == self.num_ranks:
                    _freeze(self.sweep_bar)
            self._progress_line(f"sweep: {self.ranks_done}/{self.num_ranks or '?'} ranks scored")

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
            self._drain()
            try:
                ray.kill(self.board)
            except Exception:  # noqa: BLE001  (Ray already down)
                pass
        for bar in [state["bar"] for state in self.jobs.values()] + [self.sweep_bar]:
            if bar is not None:
                bar.close()
        if self.log:
            self.log.close()
            self.log = None

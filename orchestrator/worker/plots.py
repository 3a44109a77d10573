"""The run's plot in the store (``jobs/<job>/plots/run.png``), redrawn by rank 0 after every epoch.

The practitioner's TrainingMonitor wrote its figure at every epoch end; here the figure is the whole run
(``orchestrator plot``'s), drawn from the store in a background thread so training never waits on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

from orchestrator.errors import OrchestratorError
from orchestrator.store import JobStore
from orchestrator.worker import scratch as scratch_dirs
from orchestrator.worker.store_writer import StoreWriter


class PlotWriter:
    def __init__(self, store: JobStore, job: str, writer: StoreWriter, log: logging.Logger) -> None:
        self._store, self._job, self._writer, self._log = store, job, writer, log
        self._scratch = scratch_dirs.make("plot")
        self._due = threading.Event()
        self._pending = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plot-writer", daemon=True)
        self._thread.start()

    def epoch_done(self) -> None:
        self._pending = True
        self._due.set()

    def close(self) -> None:
        self._closed.set()
        self._due.set()
        self._thread.join(timeout=60)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._pending:  # the last epoch is drawn even when close() came right after it
                self._pending = False
                self._draw()
            if self._closed.is_set():
                return

    def _draw(self) -> None:
        from orchestrator import plot
        from orchestrator.run_plot import run_plot_data

        local = os.path.join(self._scratch, "run.png")
        try:
            self._writer.flush()  # the epoch's history line is in the store before it is drawn
            plot.render(run_plot_data(self._store, self._job, None), local)
            self._store.upload_file(self._job, local, "plots", "run.png")
        except (OrchestratorError, OSError, ValueError) as exc:  # a plot is worth a warning, not the job
            self._log.warning("plot: could not redraw plots/run.png: %s", exc)

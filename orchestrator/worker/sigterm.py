"""SIGTERM to any worker of the group, as TensorFlow's coordination service tells every worker of it."""

from __future__ import annotations

import logging
import threading
import time


class SigtermNotice:
    """Whether any worker of the group has received SIGTERM, as TensorFlow's coordination service tells it.

    Under MultiWorkerMirroredStrategy, TensorFlow catches SIGTERM in every worker process (its preemption
    notifier replaces Ray's exit-on-SIGTERM; measured here: the process keeps training) and publishes the notice
    under ``TF_DEFAULT_PREEMPTION_NOTICE_KEY`` in the coordination service, where every worker can read it. This
    is what ``tf.distribute.experimental.PreemptionCheckpointHandler`` waits on; a daemon thread waits on the
    same key here (as TF's own ``PreemptionWatcher`` does, which only runs on TPUs), so training never blocks.
    """

    KEY = "TF_DEFAULT_PREEMPTION_NOTICE_KEY"

    def __init__(self, log: logging.Logger) -> None:
        self.preemption_message: str | None = None
        self.noticed_at: float | None = None  # UNIX time the notice arrived here
        self._log = log
        threading.Thread(target=self._wait, name="sigterm-notice", daemon=True).start()

    def _wait(self) -> None:
        from tensorflow.python.eager import context

        try:
            value = context.context().get_config_key_value(self.KEY)
        except Exception as exc:  # no coordination service, or it shut down with the worker group
            self._log.debug("SIGTERM notices off: %s", exc)
            return
        task = str(value or "")
        rank = task.rsplit("task:", 1)[-1] if "task:" in task else "?"  # TF_CONFIG's task index is the world rank
        self.noticed_at = time.time()
        self.preemption_message = f"rank {rank} received SIGTERM (TensorFlow task {task or '?'})"
        self._log.warning("%s: a just-in-time backup follows", self.preemption_message)

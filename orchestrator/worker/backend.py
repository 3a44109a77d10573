"""Ray Train's TensorFlow backend, plus the SIGTERM notice handler installed on every worker's main thread.

Ray Train runs the training function in a thread of the worker actor, where ``signal.signal`` is refused; the
backend's ``on_start`` runs on the actor's main thread, before training, so the handler is installed there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.train.tensorflow.config import TensorflowConfig, _TensorflowBackend


@dataclass
class NoticeTensorflowConfig(TensorflowConfig):
    store_url: str = ""
    job: str = ""

    @property
    def backend_cls(self) -> type[_NoticeTensorflowBackend]:
        return _NoticeTensorflowBackend


class _NoticeTensorflowBackend(_TensorflowBackend):
    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        super().on_start(worker_group, backend_config)
        from orchestrator.worker import notices

        installed = worker_group.execute(notices.install, backend_config.store_url, backend_config.job)
        if not all(installed):
            import logging

            logging.getLogger("orchestrator.driver").warning(
                "SIGTERM notices are off on some workers (not on their main thread): a SIGTERM loses the steps "
                "since the last backup there"
            )

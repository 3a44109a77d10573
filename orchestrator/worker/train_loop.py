"""The function Ray Train runs on every worker."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.worker.config import WorkerConfig


def train_loop_per_worker(config: dict[str, Any]) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported anywhere in this process
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from orchestrator.worker.session import TrainingSession

    TrainingSession(WorkerConfig.model_validate(config)).run()

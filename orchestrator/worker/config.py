"""What the driver hands every worker: its own module, so that the driver, the worker's entry point
(``train_loop``) and its session (``session``) all import it without importing one another."""

from __future__ import annotations

from orchestrator.spec import StrictModel


class WorkerConfig(StrictModel):
    """What the driver hands every worker; the spec itself is read from the store's job record."""

    job: str
    store_url: str
    keras_cache_url: str | None = None
    run: str | None = None  # Ray Train's run name: an elastic job's growth handshake (resize_signal) is keyed by it

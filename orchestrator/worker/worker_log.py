"""The worker's logger: every line to the job's ``worker-<rank>.log`` in the store and to stderr, stamped in UTC."""

from __future__ import annotations

import logging
import time

from orchestrator.worker.store_writer import StoreWriter

LOGGER_NAME = "orchestrator.worker"


class StoreLogHandler(logging.Handler):
    def __init__(self, writer: StoreWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.log(self.format(record) + "\n")


def worker_logger(writer: StoreWriter, rank: int) -> logging.Logger:
    logger = logging.getLogger(f"{LOGGER_NAME}.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = StoreLogHandler(writer)
    formatter = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    formatter.converter = time.gmtime  # UTC, as driver.log and controller.log (`logs --since` reads them alike)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    stream = logging.StreamHandler()
    stream.setFormatter(handler.formatter)
    logger.addHandler(stream)
    return logger

"""A real TensorBoard over jobs' event files, through the local mirror that follows them as rank 0 uploads them
(a folder store and memory://, an object store's stand-in). No Ray: the event files are written here."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from orchestrator import board as boards
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw

pytestmark = pytest.mark.integration


def events(folder: Path, losses: list[float], first_epoch: int = 0) -> bytes:
    """An event file with one ``epoch_loss`` scalar per epoch, as TensorBoard's own writer makes it."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for step, loss in enumerate(losses, start=first_epoch):
        value = summary_pb2.Summary.Value(tag="epoch_loss", simple_value=loss)
        writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(value=[value])))
    writer.close()
    [path] = folder.iterdir()
    return path.read_bytes()


def scalars(board: boards.Board, run: str) -> list[tuple[int, float]]:
    query = urllib.parse.urlencode({"run": run, "tag": "epoch_loss"})
    try:
        with urllib.request.urlopen(f"{board.url}data/plugin/scalars/scalars?{query}", timeout=5) as answer:
            return [(int(step), float(value)) for _, step, value in json.loads(answer.read())]
    except urllib.error.HTTPError:  # the run or tag is not loaded yet
        return []


def wait_for_points(board: boards.Board, run: str, count: int, timeout_s: float = 60) -> list[tuple[int, float]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        points = scalars(board, run)
        if len(points) >= count:
            return points
        board.mirror.sync()
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard showed {scalars(board, run)} for {run}, not {count} points")


@pytest.mark.parametrize("url_kind", ["folder", "memory"])
def test_tensorboard_shows_each_job_and_follows_new_epochs(url_kind: str, tmp_path: Path) -> None:
    from bench.gcs import free_port

    url = str(tmp_path / "store") if url_kind == "folder" else f"memory://board-{tmp_path.name}"
    store = JobStore(url)
    for name in ("adam", "sgd"):
        store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": name}))
        store.fs.makedirs(store.path(name, "tensorboard"), exist_ok=True)
    first = events(tmp_path / "w1", [2.0, 1.5])
    store.fs.pipe_file(store.path("adam", "tensorboard", "events.out.tfevents.1.host.attempt-1"), first)
    store.fs.pipe_file(
        store.path("sgd", "tensorboard", "events.out.tfevents.1.host.attempt-1"), events(tmp_path / "w2", [3.0])
    )

    board = boards.start(store, ["adam", "sgd"], host="127.0.0.1", port=free_port(), reload_s=1)
    try:
        boards.wait_until_serving(board)
        assert wait_for_points(board, "adam", 2) == [(0, 2.0), (1, 1.5)]
        assert wait_for_points(board, "sgd", 1) == [(0, 3.0)]
        # the next attempt's file (a restart): the same run goes on
        store.fs.pipe_file(
            store.path("adam", "tensorboard", "events.out.tfevents.2.host.attempt-2"),
            events(tmp_path / "w3", [1.0, 0.5], first_epoch=2),
        )
        points = wait_for_points(board, "adam", 4)
        assert points == [(0, 2.0), (1, 1.5), (2, 1.0), (3, 0.5)]
    finally:
        board.close()
    assert board.process.poll() is not None

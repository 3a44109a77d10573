"""Scratch folders left by killed workers are removed; those of live processes, and anything else, are not."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.worker import scratch


def test_the_folders_of_gone_processes_are_swept_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    mine = Path(scratch.make("backup-rank0"))
    assert mine.parent == tmp_path and mine.name.startswith(f"orchestrator-backup-rank0-p{os.getpid()}-")
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    left = []
    for kind in ("backup-rank1", "plot", "tensorboard-a3", "fetched-rank0"):
        folder = tmp_path / f"orchestrator-{kind}-p{gone}-abc_12x"
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "ckpt.data").write_bytes(b"x" * 1000)
        left.append(folder)
    old = time.time() - scratch.LEGACY_AGE_S - 60
    for name in ("orchestrator-backup-rank0-k2j_x9qz", "orchestrator-plot-a1b2c3d4"):  # an older version's
        folder = tmp_path / name
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "ckpt.data").write_bytes(b"x" * 500)
        os.utime(folder, (old, old))
        left.append(folder)
    recent = tmp_path / "orchestrator-fetched-rank1-zz_09abc"  # an older version's, but it may still be in use
    recent.mkdir()
    others = [
        recent,
        tmp_path / "orchestrator-ray-0-12345",  # Ray's own folder: no pid in our pattern
        tmp_path / f"someone-else-p{gone}-abc",
        tmp_path / f"orchestrator-plot-p{gone}-file",  # a file, not a folder
    ]
    others[1].mkdir()
    others[2].mkdir()
    others[3].write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="test"):
        assert scratch.sweep(logging.getLogger("test")) == (6, 5000)
    assert "removed 6 scratch folder(s) (0.0 MB) that killed workers left" in caplog.text
    assert not any(folder.exists() for folder in left)
    assert mine.is_dir() and all(other.exists() for other in others)
    caplog.clear()
    assert scratch.sweep(logging.getLogger("test")) == (0, 0) and caplog.text == ""  # nothing to say: no line

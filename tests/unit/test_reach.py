"""An address that cannot be reached fails in seconds, in one line naming it (issue #15, "slow failures"): a dead
Ray cluster took 40 s (submit) to 14 min (run, resume) to say so, an unreachable gs:// store 34-50 s per read
command. Real closed ports here (bound, then closed: nothing listens), and a listener whose queue is full for an
address that does not answer. The bounds are generous (what came before was 3 to 60 times slower), never a
benchmark; every command runs in a subprocess with a timeout, so that a regression fails instead of hanging.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from orchestrator import launcher, reach, submission
from orchestrator.cli import app
from orchestrator.errors import ClusterError, StoreError
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.store.fs import _on_google_cloud
from tests.conftest import JOBS, REPO
from tests.unit.test_cli import add_trained_job

BOUND_S = 15.0  # each command below failed after 34 s to 14 min before; it takes 1-3 s now


def closed_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes no more connections and refuses none: a listener whose accept queue is full, so a
    connection attempt times out, as to a host behind a firewall that drops packets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    while True:
        filler = socket.socket()
        filler.settimeout(0.5)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            filler.close()
            break
        fillers.append(filler)
        assert len(fillers) < 10, "the listener's queue never filled"
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """``python -m orchestrator ARGS``: exit code, stdout, stderr and seconds taken."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def one_error_line(stderr: str, code: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error[")]
    assert len(lines) == 1 and lines[0].startswith(f"error[{code}]: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ the probe


def test_a_refused_connection_and_an_unknown_host_are_certain_and_said_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "orchestrator.reach")
    started = time.monotonic()
    assert reach.unreachable("127.0.0.1", closed_port(), "x") == "connection refused"
    assert (reach.unreachable("no-such-host.invalid", 80, "x") or "").startswith("unknown host no-such-host.invalid")
    assert time.monotonic() - started < BOUND_S and caplog.records == []  # nothing waited for


def test_an_address_that_does_not_answer_is_waited_for_saying_so_then_given_up(
    silent_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "orchestrator.reach")
    started = time.monotonic()
    assert reach.unreachable("127.0.0.1", silent_port, "the thing at X", wait_s=3) == "no answer in 3 s"
    assert 3 <= time.monotonic() - started < BOUND_S
    assert [r.getMessage() for r in caplog.records] == ["no answer yet from the thing at X; waiting up to 3 s for it"]


def test_an_address_that_answers_passes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert reach.unreachable("127.0.0.1", listener.getsockname()[1], "x") is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        ("http://head:8265", ("head", 8265)),
        ("https://h", ("h", 443)),
        ("ray://head:10001", ("head", 10001)),
        ("[::1]:6379", ("::1", 6379)),
        ("auto", None),
        ("h:notaport", None),
    ],
)
def test_the_host_and_port_of_an_address(address: str, expected: tuple[str, int] | None) -> None:
    assert reach.host_port(address) == expected


# ------------------------------------------------------------------------------------------------ Ray


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_run_on_a_dead_ray_address_fails_in_seconds_naming_it(tmp_path: Path, scheme: str) -> None:
    address = f"{scheme}127.0.0.1:{closed_port()}"
    store = str(tmp_path / "store")
    code, _, err, seconds = cli("run", str(JOBS / "quickstart.yaml"), "--address", address, "--store", store)
    line = one_error_line(err, "cluster")
    assert (
        code == ClusterError.exit_code
        and line == f"error[cluster]: cannot reach the Ray cluster at {address}: connection refused"
    ), err
    assert "orchestrator up" in err and "$RAY_ADDRESS" in err
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert JobStore(store).job_names() == []  # nothing recorded


def test_resume_on_a_dead_ray_address_fails_in_seconds_and_leaves_the_job_stopped(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    add_trained_job(store)
    store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", JobStatus.STOPPED, reason="stop #1")
    address = f"127.0.0.1:{closed_port()}"
    code, _, err, seconds = cli("resume", "quickstart", "--address", address, "--store", store.url)
    assert (
        code == ClusterError.exit_code
        and f"cannot reach the Ray cluster at {address}: connection refused" in one_error_line(err, "cluster")
    )
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert (store.read_state("quickstart").status, store.read_state("quickstart").reason) == (
        JobStatus.STOPPED,
        "stop #1",
    )


def test_run_says_what_it_waits_for_when_the_address_does_not_answer(
    silent_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reach, "WAIT_S", 4.0)
    address = f"127.0.0.1:{silent_port}"
    result = CliRunner().invoke(
        app, ["run", str(JOBS / "quickstart.yaml"), "--address", address, "--store", str(tmp_path / "store")]
    )
    assert result.exit_code == ClusterError.exit_code, result.output
    assert f"warning: no answer yet from the Ray cluster at {address}; waiting up to 4 s" in result.stderr
    assert f"error[cluster]: cannot reach the Ray cluster at {address}: no answer in 4 s" in result.stderr


@pytest.mark.parametrize("own", [None, "7"])
def test_ray_init_on_an_address_tries_its_gcs_a_bounded_number_of_times_and_says_what_it_waits_for(
    own: str | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A port that takes connections but is no GCS (a dashboard's, another service's) held ray.init 20 attempts of
    about 40 s each (14 min, measured); Ray reads its attempt count when it connects. A user's own count wins."""
    if own is None:
        monkeypatch.delenv(launcher.GCS_ATTEMPTS_ENV, raising=False)
    else:
        monkeypatch.setenv(launcher.GCS_ATTEMPTS_ENV, own)
    monkeypatch.setattr(launcher, "GCS_NOTICE_S", 0.2)
    caplog.set_level(logging.WARNING, "orchestrator.reach")
    seen: list[str | None] = []

    def init(**kwargs: object) -> None:
        seen.append(os.environ.get(launcher.GCS_ATTEMPTS_ENV))
        time.sleep(1.0)

    launcher._init_bounded(SimpleNamespace(init=init), "10.0.0.5:6379", None)
    assert seen == [own or launcher.GCS_ATTEMPTS]
    assert os.environ.get(launcher.GCS_ATTEMPTS_ENV) == own  # as it was, after
    assert [r.getMessage() for r in caplog.records] == [
        "the Ray cluster at 10.0.0.5:6379 takes connections but its GCS has not answered in 0.2 s (a head still "
        "starting, or not a Ray head's GCS port); waiting up to "
        + ("about 2 min" if own is None else f"{launcher.GCS_ATTEMPTS_ENV}=7 attempts of about 40 s")
    ]


def test_submit_uses_the_address_it_is_given_over_a_dead_ray_address_in_the_environment(tmp_path: Path) -> None:
    """Ray's Jobs SDK takes $RAY_ADDRESS over its argument: with a dead one it waited 40 s for the wrong cluster."""
    given, dead = f"http://127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"
    code, _, err, seconds = cli(
        "submit",
        str(JOBS / "quickstart.yaml"),
        "--address",
        given,
        "--store",
        str(tmp_path / "store"),
        env={"RAY_ADDRESS": dead},
    )
    assert code == ClusterError.exit_code
    assert (
        one_error_line(err, "cluster") == f"error[cluster]: cannot reach the Ray Jobs API at {given}: connection "
        "refused"
    )
    assert seconds < BOUND_S, f"{seconds:.1f} s"


def test_submit_to_a_dead_gcs_address_in_the_environment_fails_in_seconds(tmp_path: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"
    code, _, err, seconds = cli(
        "submit", str(JOBS / "quickstart.yaml"), "--store", str(tmp_path / "store"), env={"RAY_ADDRESS": address}
    )
    assert code == ClusterError.exit_code
    assert (
        one_error_line(err, "cluster") == f"error[cluster]: cannot reach the Ray cluster at {address}: connection "
        "refused"
    )
    assert seconds < BOUND_S, f"{seconds:.1f} s"


def test_the_ray_sdk_sees_no_other_ray_address_while_it_is_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    with submission.sdk_address("http://127.0.0.1:1"):
        assert "RAY_ADDRESS" not in os.environ
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:2"
    with submission.sdk_address("127.0.0.1:2"):  # the address from the environment: Ray reads it there too
        assert os.environ["RAY_ADDRESS"] == "127.0.0.1:2"


# ------------------------------------------------------------------------------------------------ gs:// stores


def gcs_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment: gcsfs's defaults, no credentials (a fresh gcloud folder), nothing of the test
    emulator's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "NO_GCE_CHECK",
            "STORAGE_EMULATOR_HOST",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
        )
    }
    return {**env, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), **extra}


def gcs_cli(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("command", [["list"], ["status", "x"]])
def test_a_gs_store_whose_endpoint_refuses_fails_in_seconds_naming_it(tmp_path: Path, command: list[str]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = gcs_env(tmp_path, STORAGE_EMULATOR_HOST=endpoint)
    code, err, seconds = gcs_cli(env, *command, "--store", "gs://some-bucket/x")
    assert code == StoreError.exit_code
    assert (
        one_error_line(err, "store") == f"error[store]: store gs://some-bucket/x: cannot reach {endpoint}: "
        "connection refused"
    )
    assert "STORAGE_EMULATOR_HOST" in err
    assert seconds < BOUND_S, f"{seconds:.1f} s"


def test_a_gs_store_whose_endpoint_has_no_address_fails_in_seconds(tmp_path: Path) -> None:
    env = gcs_env(tmp_path, STORAGE_EMULATOR_HOST="http://storage.no-such-host.invalid")
    code, err, seconds = gcs_cli(env, "list", "--store", "gs://some-bucket/x")
    assert code == StoreError.exit_code
    assert "cannot reach http://storage.no-such-host.invalid: unknown host" in one_error_line(err, "store")
    assert seconds < BOUND_S, f"{seconds:.1f} s"


@pytest.mark.skipif(_on_google_cloud(), reason="on Google Cloud gcsfs rightly asks the metadata server")
def test_opening_a_gs_store_off_google_cloud_without_credentials_asks_no_metadata_server(tmp_path: Path) -> None:
    """gcsfs's "cloud" credentials step retried a metadata server that is not there for about 15 s (5 attempts
    with backoff) before every gs:// command went on anonymously. google-auth's own detection is held to one
    attempt of 1 s here, so that only that step could take long."""
    env = gcs_env(tmp_path, GCE_METADATA_DETECT_RETRIES="1", GCE_METADATA_TIMEOUT="1")
    code = (
        "import time\nfrom orchestrator.store import JobStore\nstarted = time.monotonic()\n"
        "JobStore('gs://some-bucket/x')\nprint(time.monotonic() - started)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=True
    )
    assert float(done.stdout.strip().splitlines()[-1]) < 10.0, done.stdout + done.stderr

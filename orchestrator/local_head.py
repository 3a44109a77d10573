"""The local Ray head ``orchestrator up`` starts in the background and ``orchestrator down`` stops, for ``submit``
from this machine: its record (``~/.orchestrator/head.json``, :class:`views.HeadRecord`), how its processes are
told apart from any other Ray here, and the Ray token.

Ray 2.60 asks for a token (``RAY_AUTH_MODE=token``): ``up`` starts its head with token authentication, making a
token in Ray's own file (``~/.ray/auth_token``) if there is none, and ``submit``/``cancel``
(:mod:`orchestrator.submission`) hand Ray's client the token from the environment or that file. The token is never
read into a message, the store or a log here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.errors import ClusterError, UsageError
from orchestrator.lifecycle import process_alive
from orchestrator.views import DownOutput, HeadOutput, HeadRecord

HOME_ENV = "ORCHESTRATOR_HOME"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DASHBOARD_WAIT_S = 60.0  # a head's dashboard answers within seconds of `ray start`


def orchestrator_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".orchestrator")


# ------------------------------------------------------------------------------------------------ token


def token_source() -> str | None:
    """Where Ray's client will find a token (a description, never the token), or ``None``."""
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    path = Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")
    return str(path) if path.is_file() and path.stat().st_size else None


def use_token_if_available() -> str | None:
    """Turn on Ray's token mode in this process when a token is available and the mode is not set."""
    source = token_source()
    if source is not None and AUTH_MODE_ENV not in os.environ:
        os.environ[AUTH_MODE_ENV] = "token"
    return source


def ensure_token() -> str:
    """A token for a head started here: the existing one, else a new one in Ray's default file (mode 0600)."""
    source = token_source()
    if source is not None:
        return source
    path = Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    return str(path)


# ------------------------------------------------------------------------------------------------ local head


def head_file() -> Path:
    return orchestrator_home() / "head.json"


def read_head() -> HeadRecord | None:
    path = head_file()
    if not path.is_file():
        return None
    try:
        return HeadRecord.model_validate_json(path.read_text())
    except ValueError:
        return None


def _answers(url: str, timeout: float = 2.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout):
            return True
    except urllib.error.HTTPError:  # 401/403 without a token: it answers
        return True
    except OSError:
        return False
    except Exception:  # http.client errors on a half-started dashboard
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def up(*, port: int = 6379, dashboard_port: int = 8265, num_cpus: int | None = None) -> HeadOutput:
    """Start a local Ray head in the background with token authentication, or reuse the one running."""
    _check_up_options(port, dashboard_port, num_cpus)
    head = read_head()
    if head is not None and _answers(head.dashboard_url):
        return HeadOutput(head=head, started=False)
    for flag, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not _port_free(value):
            raise ClusterError(
                f"{flag} {value} is in use on this machine (another Ray, or another service)",
                hint="pick free ports: orchestrator up --port N --dashboard-port M (or stop the other Ray)",
            )
    ensure_token()
    head = _start_head(port, dashboard_port, num_cpus)
    _wait_for_dashboard(head)
    head_file().parent.mkdir(parents=True, exist_ok=True)
    head_file().write_text(head.model_dump_json(indent=2))
    return HeadOutput(head=head, started=True)


def _check_up_options(port: int, dashboard_port: int, num_cpus: int | None) -> None:
    for flag, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 1 <= value <= 65535:
            raise UsageError(f"{flag}: got {value}, must be a TCP port number, 1-65535")
    if port == dashboard_port:
        raise UsageError(f"--port and --dashboard-port: both are {port}; the head needs two different ports")
    if num_cpus is not None and num_cpus < 1:
        raise UsageError(f"--num-cpus: got {num_cpus}, must be 1 or more (leave it out to offer every CPU)")


def _start_head(port: int, dashboard_port: int, num_cpus: int | None) -> HeadRecord:
    """``ray start --head`` in the background, in a temp folder of its own (what :func:`_unidentifiable` checks)."""
    temp_dir = f"/tmp/orchestrator-ray-{os.getuid()}-{port}"  # short: Ray's socket paths must fit in 107 bytes
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        # Ports Ray fixes by default (52365, 10001) would clash with any other Ray on this machine.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ] + ([f"--num-cpus={num_cpus}"] if num_cpus is not None else [])
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env[AUTH_MODE_ENV] = "token"
    # The job's entrypoint runs `python -m orchestrator`: the head's PATH must find this very interpreter first.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ClusterError(
            f"ray start --head failed (exit {done.returncode}): {lines[-1][:300] if lines else 'no output'}",
            hint=f"see {temp_dir}/session_latest/logs; or stop a Ray already running here with: ray stop",
        )
    return HeadRecord(
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        gcs_address=f"127.0.0.1:{port}",
        temp_dir=temp_dir,
        num_cpus=num_cpus,
    )


def _wait_for_dashboard(head: HeadRecord) -> None:
    """Until the head's dashboard answers; one that does not within ``DASHBOARD_WAIT_S`` is stopped again."""
    deadline = time.monotonic() + DASHBOARD_WAIT_S
    while not _answers(head.dashboard_url):
        if time.monotonic() > deadline:
            _kill_head(head)
            raise ClusterError(f"the local Ray head's dashboard at {head.dashboard_url} did not answer in 60 s")
        time.sleep(0.5)


def down() -> DownOutput:
    """Stop the local head ``up`` started (only its processes: never another Ray on this machine).

    Raises:
        ClusterError: ``head.json`` is damaged, or does not name a head ``up`` would start: nothing is signalled.
    """
    head = read_head()
    if head is None:
        if head_file().is_file():
            raise ClusterError(
                f"{head_file()} is damaged: down signals no process it cannot identify as that head's",
                hint="stop that Ray yourself (ray stop, if it is the only one on this machine), then delete the file",
            )
        return DownOutput(dashboard_url=None, processes=0)
    problem = _unidentifiable(head)
    if problem is not None:
        raise ClusterError(
            f"{head_file()}: {problem}; down signals no process it cannot identify as that head's",
            hint="stop that Ray yourself (ray stop, if it is the only one on this machine), then delete the file",
        )
    count = _kill_head(head)
    head_file().unlink(missing_ok=True)
    return DownOutput(dashboard_url=head.dashboard_url, processes=count)


_TEMP_DIR = re.compile(r"/tmp/orchestrator-ray-(\d+)-(\d+)")  # what `up` names its head's folder


def _unidentifiable(head: HeadRecord) -> str | None:
    """Why ``head`` cannot be told apart from other processes (None: it can), before anything is signalled.

    ``up`` writes ``temp_dir`` /tmp/orchestrator-ray-<uid>-<port> and ``gcs_address`` 127.0.0.1:<port>; anything
    else (an empty folder would match every process) is a record this code did not write."""
    folder = _TEMP_DIR.fullmatch(head.temp_dir)
    host, _, port = head.gcs_address.rpartition(":")
    if folder is None or int(folder.group(1)) != os.getuid():
        return f"temp_dir {head.temp_dir!r} is not a folder `orchestrator up` names (/tmp/orchestrator-ray-UID-PORT)"
    if not host or not port.isdigit() or port != folder.group(2) or not 1 <= int(port) <= 65535:
        return f"gcs_address {head.gcs_address!r} does not match temp_dir {head.temp_dir!r}"
    return None


def _head_pids(head: HeadRecord) -> list[int]:
    """This head's processes, this user's only: those naming its temp dir (as a whole path), then (Ray renames its
    agents and workers, ``ray::DashboardAgent``) every process that is their child, names their raylet, or has a
    file open in that folder. Nothing for a record :func:`_unidentifiable` refuses."""
    if _unidentifiable(head) is not None:
        return []
    folder = head.temp_dir  # not its GCS port: orphans of another Ray that once had that port name it too
    pattern = f"{re.escape(folder)}(/|[ '\"]|$)"
    found = subprocess.run(
        ["pgrep", "-U", str(os.getuid()), "-f", pattern], capture_output=True, text=True, check=False
    )
    pids = {int(pid) for pid in found.stdout.split()}
    for _ in range(3):  # children of children
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in pids:
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                if entry.stat().st_uid != os.getuid():
                    continue
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
                raylet = {int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RAY_RAYLET_PID=")}
                files = [os.readlink(fd) for fd in (entry / "fd").iterdir()] if parent == 1 else []
                inside = any(f == folder or f.startswith(folder + "/") for f in files)
                if parent in pids or raylet & pids or inside:
                    pids.add(int(entry.name))
    pids.discard(os.getpid())
    return sorted(pids)


def _kill_head(head: HeadRecord) -> int:
    pids = _head_pids(head)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
            time.sleep(0.2)
    return len(pids)

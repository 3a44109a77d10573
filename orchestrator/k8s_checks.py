"""What ``orchestrator k8s render`` checks before it writes a manifest: a job name, a store every pod can reach, an
image reference, a namespace, a Kueue queue and the RayJob's deadlines; each refusal one line naming the value
and what is accepted. ``orchestrator.k8s`` renders from what passes.
"""

from __future__ import annotations

import re

from orchestrator.errors import UsageError
from orchestrator.spec import JOB_NAME_PATTERN, JOB_NAME_RULE

STORE_SCHEMES = ("gs", "s3")
# A bucket and a path of plain characters: the URL is expanded into a shell command line (k8s.ENTRYPOINT).
_STORE_URL = re.compile(r"^[a-z0-9]+://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INT32_MAX = 2**31 - 1


def parse_duration(text: str, option: str) -> int | None:
    """Seconds from ``90m``, ``36h``, ``3d``, ``600s`` or ``600``; None from ``none`` (no deadline)."""
    if text.strip().lower() == "none":
        return None
    match = _DURATION.match(text.strip())
    seconds = int(match.group(1)) * _SECONDS_PER[match.group(2)] if match else 0
    if not 0 < seconds <= _INT32_MAX:
        raise UsageError(
            f"{option}: got {text!r}, must be a positive duration such as 1800, 90m, 36h or 3d (at most "
            f"{_INT32_MAX} s), or none"
        )
    return seconds


def check_store_url(store_url: str) -> str:
    """The store URL if every pod of a cluster can reach it (a bucket); else a UsageError saying what is accepted."""
    scheme = store_url.partition("://")[0] if "://" in store_url else ""
    if scheme in ("", "file", "local", "memory"):
        why = "a local path: every pod of a multi-node cluster needs the same, shared store"
    elif scheme not in STORE_SCHEMES:
        why = f"a {scheme}:// store, which orchestrator does not support on Kubernetes"
    elif not _STORE_URL.match(store_url):
        why = "not a bucket name and a path of plain characters (letters, digits, '.', '_', '-', '/')"
    else:
        return store_url
    accepted = " or ".join(f"{name}://bucket/path" for name in STORE_SCHEMES)
    raise UsageError(
        f"store: got {store_url!r}, {why}; accepted: {accepted}",
        hint="create a bucket the ServiceAccount 'orchestrator' can write (see k8s/README.md) and pass its URL",
    )


def check_job_name(job_name: str) -> None:
    if not re.fullmatch(JOB_NAME_PATTERN, job_name):
        raise UsageError(f"job name: got {job_name!r}, must be {JOB_NAME_RULE}")


def check_image(image: str) -> None:
    if not _IMAGE.match(image):
        raise UsageError(
            f"image: got {image!r}, must be an image reference such as "
            "us-docker.pkg.dev/PROJECT/orchestrator/orchestrator:0.1.0-ray2.60.0-py311-gpu",
            hint="build it with k8s/Dockerfile (see k8s/README.md)",
        )


def check_namespace(namespace: str) -> None:
    if not _DNS_LABEL.match(namespace):
        raise UsageError(f"namespace: got {namespace!r}, must be 1-63 characters of a-z, 0-9 and '-'")


def check_queue(queue: str) -> None:
    if not _DNS_LABEL.match(queue):
        raise UsageError(
            f"queue: got {queue!r}, must be the name of a Kueue LocalQueue: 1-63 characters of a-z, 0-9 and '-'"
        )


def check_deadlines(deadline_s: int | None, start_deadline_s: int | None) -> None:
    for option, value in (
        ("deadline (--deadline)", deadline_s),
        ("start deadline (--start-deadline)", start_deadline_s),
    ):
        if value is not None and not 0 < value <= _INT32_MAX:
            raise UsageError(f"{option}: got {value!r} s, must be 1 to {_INT32_MAX} seconds, or none")
    if deadline_s is not None and start_deadline_s is not None and start_deadline_s >= deadline_s:
        raise UsageError(
            f"start deadline (--start-deadline): got {start_deadline_s} s, must be shorter than the deadline "
            f"(--deadline, {deadline_s} s), which already ends a job that has not started"
        )

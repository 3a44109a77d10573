"""Whether a network address answers, found out in seconds, before it is handed to a client that retries for
minutes: Ray's GCS client (about 40 s per attempt, 20 attempts), the Ray Jobs SDK's lookup of a dashboard
through the GCS, gcsfs (6 attempts over about 33 s on a refused connection or an unknown host).

A DNS lookup and a TCP connection: an unknown host, a refused connection or an unreachable network is certain,
and the caller fails at once, naming the address. No answer (a connection that times out: a slow network, a
firewall that drops packets) is not: one warning line says what is waited for, and the wait is bounded.
Nothing is sent over the connection (no credentials, no request).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

log = logging.getLogger("orchestrator.reach")  # the CLI prints its warnings (what is being waited for)

FIRST_ATTEMPT_S = 2.0  # the first TCP connection attempt, before saying that it waits
CONNECT_TIMEOUT_S = 5.0  # each later attempt
WAIT_S = 30.0  # all attempts, when the address does not answer
CERTAIN_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


def host_port(address: str, default_port: int | None = None) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT``, ``[V6]:PORT`` or ``scheme://HOST[:PORT]/...`` (http and https default to
    80 and 443); ``None`` when there is none to probe (``auto``, ``local``, no port)."""
    text = address.strip()
    if "://" not in text:
        text = "tcp://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme, default_port)
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def unreachable(host: str, port: int, what: str, *, wait_s: float | None = None) -> str | None:
    """``None`` once a TCP connection to ``host:port`` opens; else why not, in a few words (``connection
    refused``, ``unknown host``, ``no answer in 30 s``).

    Certain failures return at once. A connection that times out is tried again until ``wait_s`` (else
    ``WAIT_S``) has passed, after one warning naming ``what`` is waited for (``the Ray cluster at HOST:6379``)."""
    wait_s = WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    attempt_s = FIRST_ATTEMPT_S  # a healthy address answers in well under this
    told = False
    while True:
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(attempt_s, deadline - started))):
                return None
        except socket.gaierror as exc:
            return f"unknown host {host} ({exc.strerror or exc})"
        except OSError as exc:
            if isinstance(exc, ConnectionRefusedError) or exc.errno in CERTAIN_ERRNOS:
                return (exc.strerror or type(exc).__name__).lower()
            log.debug("probing %s:%s: %r", host, port, exc)  # a timeout, or another error: not certain
        if time.monotonic() >= deadline:
            return f"no answer in {wait_s:g} s"
        if not told:
            log.warning(f"no answer yet from {what}; waiting up to {wait_s:g} s for it")
            told = True
        attempt_s = CONNECT_TIMEOUT_S
        time.sleep(max(0.0, min(1.0 - (time.monotonic() - started), deadline - time.monotonic())))


@contextlib.contextmanager
def notice_after(seconds: float, message: str) -> Iterator[None]:
    """Warn with ``message`` (what is being waited for) if the block is still running after ``seconds``."""
    timer = threading.Timer(seconds, log.warning, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()

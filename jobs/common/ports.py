"""Free TCP ports on 127.0.0.1 for the servers the jobs and tests start (S3, Ray, torch
distributed). Every server here binds loopback only."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; a race with another starter is
    possible, so callers that can retry do)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p and p + 1 free on 127.0.0.1: infra/local_s3 puts radosgw on p and
    its monitor on p + 1, so two servers started this way never share a monitor."""
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")

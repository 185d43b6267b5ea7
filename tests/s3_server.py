"""An S3-compatible server on loopback for the test session: moto's standalone server
(``ThreadedMotoServer``, as Ray's own suite uses), dummy credentials, one bucket.

:func:`configure_environment` runs when conftest is imported, before any Ray cluster starts, so
that the session's Ray workers inherit the same environment: the endpoint on 127.0.0.1 and a
port reserved for it, dummy credentials, a region, the instance metadata service off (the SDK
would otherwise ask 169.254.169.254), and no shared credentials or config file. Whatever AWS
settings the caller had are replaced: no test can reach any address but loopback.
The server itself starts only when a test asks for it (conftest's ``s3_bucket``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

BUCKET = "clinfo-test"
_CHOSEN = "CLINFO_TEST_S3_ENDPOINT"  # the endpoint this process chose
ACCESS_KEY = "testing"  # dummies: moto accepts any, until authentication is turned on
_REPLACED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3",
)


def _free_port() -> int:
    """A free port below the kernel's ephemeral range and above Ray's worker ports (10002 to
    19999). The server starts minutes after the port is chosen: a port from the ephemeral range
    may by then be the local end of some client's connection (the session's Ray makes many),
    and the server could not bind it."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(low, 20001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for the test S3 server between 20000 and {low}")


def configure_environment() -> str:
    """Point every AWS client of this process (and of the processes it starts) at the
    session's server; returns the endpoint URL."""
    for name in _REPLACED:
        os.environ.pop(name, None)
    # once per process: a conftest run again in it (pytester's inline runs) keeps the endpoint
    endpoint = os.environ.get(_CHOSEN) or f"http://127.0.0.1:{_free_port()}"
    os.environ[_CHOSEN] = endpoint
    missing = os.path.join(os.sep, "nonexistent", "clinfo-ray-tests")
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=ACCESS_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=os.path.join(missing, "credentials"),
        AWS_CONFIG_FILE=os.path.join(missing, "config"),
    )
    return endpoint


def start_server(endpoint: str) -> Any:
    """moto's server on the endpoint's port (127.0.0.1), with :data:`BUCKET` created."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = int(endpoint.rsplit(":", 1)[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # the server's thread fails alone when it cannot bind: say so here
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            break
        except OSError as err:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the test S3 server is not on 127.0.0.1:{port}: {err}") from err
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    return server


def set_authentication(endpoint: str, on: bool) -> None:
    """Turn moto's request authentication on (the dummy key is then refused: every request is
    denied) or off again (moto's ``reset-auth`` API)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if on else b"inf",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()

"""sd_notify(3) without libsystemd: one datagram per state change to $NOTIFY_SOCKET.

Every function is a no-op returning False when not started by systemd (no
$NOTIFY_SOCKET), so the daemon calls them unconditionally. A failed send is never
fatal: a service must not die because its supervisor is briefly unreachable.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: '@name' is the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock addresses and relative paths are not supported


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (newline-separated KEY=VALUE lines); True if a datagram was sent."""
    env = os.environ if environ is None else environ
    address = socket_address(env.get(NOTIFY_SOCKET_ENV, ""))
    if address is None:
        return False
    try:
        # Non-blocking: a supervisor that does not read (its queue full) must never
        # freeze the event loop; the datagram is dropped instead.
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else ""))


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) tell this reload from an older one.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_interval(*, environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds if systemd expects pings from this process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get(WATCHDOG_PID_ENV)
    if pid is not None and pid.strip() != str(os.getpid()):
        return None  # meant for another process (e.g. our parent before exec)
    return usec / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())

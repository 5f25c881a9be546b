"""The relay the surge benchmarks send to, and the same-run limit they compare with.

`Sink` is an aiosmtpd handler that takes every mail at once and records when (and to
whom); `sending_limit` is the time to send the same mails over one reused connection,
the floor any outbox drain is measured against.

`ProcessSink` runs the same handler in a process of its own (`python -m bench.relay_sink
PORT LOG`), as a real relay is: in the bench's process its SMTP work would share the
interpreter's lock with whatever is measured there. It writes one line per mail
(`time.monotonic()`, system-wide on Linux, and the recipients) that the bench reads.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller
from tests.fixtures.smtp import open_relay

SENDER = "support@example.com"
RELAY_PASSWORD = "relay-pw"  # the sink accepts any login


class Sink:
    """Accepts every mail; records when, and to whom."""

    def __init__(self) -> None:
        self.accepted: list[tuple[float, tuple[str, ...]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.accepted.append((time.monotonic(), tuple(envelope.rcpt_tos)))
        return "250 2.0.0 accepted"

    def times(self) -> list[float]:
        return [at for at, _ in self.accepted]


class _LoggingSink(Sink):
    def __init__(self, log: Any) -> None:
        super().__init__()
        self.log = log

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.log.write(f"{time.monotonic()!r} {' '.join(envelope.rcpt_tos)}\n")
        self.log.flush()
        return "250 2.0.0 accepted"


class ProcessSink:
    """The sink in a child process; `fresh()` returns what it accepted since the last call."""

    def __init__(self, port: int, log: Path) -> None:
        self.log = log
        log.write_bytes(b"")
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.relay_sink", str(port), str(log)], cwd=root
        )
        self._read = 0
        self._partial = ""
        self.accepted: list[tuple[float, tuple[str, ...]]] = []
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the sink process did not start") from None
                time.sleep(0.05)

    def fresh(self) -> list[tuple[float, tuple[str, ...]]]:
        with self.log.open("r") as log:
            log.seek(self._read)
            text = self._partial + log.read()
            self._read = log.tell()
        *lines, self._partial = text.split("\n")
        new = [
            (float(at), tuple(rcpts.split()))
            for at, _, rcpts in (line.partition(" ") for line in lines)
        ]
        self.accepted += new
        return new

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def serve(port: int, log_path: Path) -> None:
    with log_path.open("a") as log:
        controller = open_relay(_LoggingSink(log), port)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        stopped.wait()
        controller.stop()


def start_sink(port: int) -> tuple[Sink, Controller]:
    """A running sink on 127.0.0.1:`port` with AUTH (any login) and no TLS."""
    sink = Sink()
    return sink, open_relay(sink, port)


async def sending_limit(
    port: int, raws: list[bytes], recipient: Callable[[int], str] = "c{}@example.org".format
) -> float:
    """Seconds to send `raws` over one connection: the relay's own limit in this run."""
    started = time.monotonic()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    await client.login(SENDER, RELAY_PASSWORD)
    for n, raw in enumerate(raws):
        await client.sendmail(SENDER, [recipient(n)], raw)
    await client.quit()
    return time.monotonic() - started


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))

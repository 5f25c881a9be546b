"""Optional Prometheus endpoint and the counters the rest of keepword bumps.

keepword keeps its own CollectorRegistry (no process/platform collectors from the
global one, nothing another library registers), so the endpoint shows exactly what is
listed here. Call the methods of `METRICS` unconditionally: without an endpoint they
only update numbers in memory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from keepword.config import is_loopback_host

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """keepword's metrics, all labelled by mailbox name."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        label = ["mailbox"]
        self._ingested = Counter(
            "keepword_messages_ingested", "Messages stored from IMAP", label, registry=r
        )
        self._quarantined = Counter(
            "keepword_messages_quarantined", "Messages that could not be handled", label, registry=r
        )
        self._no_sender = Counter(
            "keepword_messages_without_sender",
            "Messages without a usable sender address: kept, no case opened",
            label,
            registry=r,
        )
        self._acks = Counter(
            "keepword_acknowledgements_sent",
            "Acknowledgements sent to customers",
            label,
            registry=r,
        )
        self._updates = Counter(
            "keepword_updates_sent", "Updates sent to customers before a promise broke", label,
            registry=r,
        )  # fmt: skip
        self._kept = Counter("keepword_promises_kept", "Promises kept", label, registry=r)
        self._broken = Counter("keepword_promises_broken", "Promises broken", label, registry=r)
        self._poll = Histogram(
            "keepword_poll_duration_seconds", "Duration of one mailbox poll", label,
            buckets=POLL_BUCKETS, registry=r,
        )  # fmt: skip
        self._outbox = Gauge(
            "keepword_outbox_depth", "Outgoing mails not yet sent", label, registry=r
        )
        self._imap_errors = Counter("keepword_imap_errors", "IMAP failures", label, registry=r)
        self._smtp_errors = Counter("keepword_smtp_errors", "SMTP failures", label, registry=r)
        self._job_failures = Counter(
            "keepword_job_failures", "Scheduled jobs that raised", [*label, "job"], registry=r
        )
        self._job_last_run = Gauge(
            "keepword_job_last_run_timestamp_seconds", "When the job last started (Unix time)",
            [*label, "job"], registry=r,
        )  # fmt: skip
        self._job_overdue = Gauge(
            "keepword_job_overdue", "1 if the job's last start is older than two intervals",
            [*label, "job"], registry=r,
        )  # fmt: skip
        self._triage_backlog = Gauge(
            "keepword_triage_retrying", "Messages waiting for a triage retry", label, registry=r
        )
        # Several instances on one PostgreSQL (keepword.store.leases): labelled by instance.
        self._leases_held = Gauge(
            "keepword_instance_leases", "Mailboxes this instance holds", ["instance"], registry=r
        )
        self._instances_live = Gauge(
            "keepword_instances_live", "Live instances this one counted in its last lease round",
            ["instance"], registry=r,
        )  # fmt: skip
        self._fair_share = Gauge(
            "keepword_instance_share", "The most mailboxes this instance should hold",
            ["instance"], registry=r,
        )  # fmt: skip
        self._heartbeat = Gauge(
            "keepword_instance_heartbeat_timestamp_seconds",
            "When this instance last renewed its leases (Unix time)", ["instance"], registry=r,
        )  # fmt: skip
        self._lease_changes = Counter(
            "keepword_lease_changes", "Mailbox leases won, lost or handed over",
            ["instance", "change"], registry=r,
        )  # fmt: skip

    def ingested(self, mailbox: str, n: int = 1) -> None:
        self._ingested.labels(mailbox).inc(n)

    def quarantined(self, mailbox: str, n: int = 1) -> None:
        self._quarantined.labels(mailbox).inc(n)

    def without_sender(self, mailbox: str, n: int = 1) -> None:
        self._no_sender.labels(mailbox).inc(n)

    def acknowledgement_sent(self, mailbox: str, n: int = 1) -> None:
        self._acks.labels(mailbox).inc(n)

    def update_sent(self, mailbox: str, n: int = 1) -> None:
        self._updates.labels(mailbox).inc(n)

    def promise_kept(self, mailbox: str, n: int = 1) -> None:
        self._kept.labels(mailbox).inc(n)

    def promise_broken(self, mailbox: str, n: int = 1) -> None:
        self._broken.labels(mailbox).inc(n)

    def outbox_depth(self, mailbox: str, depth: int) -> None:
        self._outbox.labels(mailbox).set(depth)

    def imap_error(self, mailbox: str) -> None:
        self._imap_errors.labels(mailbox).inc()

    def smtp_error(self, mailbox: str) -> None:
        self._smtp_errors.labels(mailbox).inc()

    def job_failed(self, mailbox: str, job: str) -> None:
        self._job_failures.labels(mailbox, job).inc()

    def job_started(self, mailbox: str, job: str, when: datetime) -> None:
        self._job_last_run.labels(mailbox, job).set(when.timestamp())
        self._job_overdue.labels(mailbox, job).set(0)

    def job_overdue(self, mailbox: str, job: str, overdue: bool) -> None:
        self._job_overdue.labels(mailbox, job).set(1 if overdue else 0)

    def triage_retrying(self, mailbox: str, count: int) -> None:
        self._triage_backlog.labels(mailbox).set(count)

    def lease_round(self, instance: str, held: int, live: int, share: int) -> None:
        self._leases_held.labels(instance).set(held)
        self._instances_live.labels(instance).set(live)
        self._fair_share.labels(instance).set(share)
        self._heartbeat.labels(instance).set(time.time())

    def lease_change(self, instance: str, change: str, n: int = 1) -> None:
        self._lease_changes.labels(instance, change).inc(n)

    def forget_mailbox(self, mailbox: str, jobs: tuple[str, ...]) -> None:
        """A mailbox removed by a reload: no stale "overdue" for it."""
        for job in jobs:
            for gauge in (self._job_last_run, self._job_overdue):
                with contextlib.suppress(KeyError):
                    gauge.remove(mailbox, job)

    def poll_seconds(self, mailbox: str, seconds: float) -> None:
        self._poll.labels(mailbox).observe(seconds)

    @contextmanager
    def timed_poll(self, mailbox: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.poll_seconds(mailbox, time.monotonic() - start)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's current value (for tests and `keepword status`)."""
        return self.registry.get_sample_value(name, labels)


METRICS = Metrics()


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: str) -> Listen:
    """'9101', ':9101', '127.0.0.1:9101', '[::1]:9101' -> Listen; a bare port means loopback."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"metrics_listen {value!r}: port must be a number") from None
    if not 0 <= port < 65536:  # 0: any free port (tests)
        raise ValueError(f"metrics_listen {value!r}: port must be 0-65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"metrics_listen {value!r}: host must be an IP address") from None
    return Listen(host, port)


@dataclass
class MetricsServer:
    listen: Listen
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(listen: str, metrics: Metrics = METRICS) -> MetricsServer:
    """Serve /metrics on `listen` in a daemon thread."""
    where = parse_listen(listen)
    if not is_loopback_host(where.host):
        log.warning("metrics endpoint on non-loopback address %s: anyone who can reach it "
                    "sees mailbox names and counts", where)  # fmt: skip
    server, thread = start_http_server(where.port, addr=where.host, registry=metrics.registry)
    log.info("metrics on http://%s/metrics", Listen(where.host, int(server.server_port)))
    return MetricsServer(where, server, thread)

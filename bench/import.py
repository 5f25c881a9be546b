"""Import benchmark (not a test): how close `keepword import` gets to the raw speed of
imapclient + mail-parser, how its memory grows with the mailbox, and what an idle poll
costs.

    .venv/bin/python bench/import.py [--messages 20000] [--write-docs]

Starts a private Dovecot (scripts/mailserver) in a short temp dir, fills two users by
MULTIAPPEND with generated, realistic mail (threads with In-Reply-To/References,
~10 KB median bodies, some HTML, some real corpus files mixed in; the team's answers,
about a quarter of it, in Sent; `--inbox-only`: the customers' mail alone): `half`
holds the first N/2 messages, `full` all N. Then, in the same run:

  (a) raw: imapclient FETCH BODY.PEEK[] in batches of 500 + mailparser parse (+ the
      field access keepword needs) of every folder, no storing; its CPU, and that of
      (b) with its workers, is printed with the best ratio it allows on this machine;
  (b) `keepword import` end to end into a fresh SQLite file, in a subprocess per size,
      whose peak RSS (ru_maxrss) is read from wait4: it takes the history in oldest
      first and triages it into cases meanwhile (pipeline.history);
  (c) an idle poll on the `full` mailbox: wall time and IMAP commands;
  (d) triage of what (b) left untriaged, as the daemon does after an import (none);
  (e) with --postgres, (b) and (d) into a private PostgreSQL;
  (f) with --sequential, the way before: the import without triage, then (d) of it all.

Prints b/a and the RSS growth from N/2 to N; --write-docs puts the figures into
docs/benchmarks.md (section "Import").
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import gzip
import logging
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import mailparser
from imapclient import IMAPClient

ROOT = Path(__file__).resolve().parent.parent
CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
PASSWORD = "bench-secret"
APPEND_CHUNK = 100
FETCH_BATCH = 500

sys.path.insert(0, str(ROOT / "src"))
logging.getLogger("mailparser").setLevel(logging.CRITICAL)  # as keepword does


def load_mailserver() -> ModuleType:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.scripts import load_script

    return load_script("mailserver")


# -- realistic mail ------------------------------------------------------------------

WORDS = [
    "order",
    "invoice",
    "delivery",
    "refund",
    "account",
    "password",
    "login",
    "error",
    "page",
    "payment",
    "card",
    "shipping",
    "address",
    "package",
    "tracking",
    "number",
    "problem",
    "question",
    "please",
    "thanks",
    "urgent",
    "broken",
    "update",
    "version",
    "install",
    "license",
    "subscription",
    "cancel",
    "renew",
    "price",
    "discount",
    "warehouse",
    "customer",
    "support",
    "ticket",
    "reply",
    "today",
    "tomorrow",
    "week",
    "month",
    "again",
    "still",
    "working",
    "not",
    "able",
    "to",
    "see",
    "the",
    "we",
    "you",
    "our",
    "your",
    "this",
    "that",
    "with",
    "from",
    "have",
    "been",
    "will",
]
FIRST = [
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Klara",
    "Lukas",
    "Mia",
    "Noah",
]
LAST = [
    "Schmidt",
    "Meyer",
    "Garcia",
    "Rossi",
    "Dubois",
    "Novak",
    "Smith",
    "Jones",
    "Kowalski",
    "Jensen",
    "Silva",
]
ZONES = ("+0000", "+0100", "+0200", "-0500", "-0800", "+0530", "+0900")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + "."


def _body(rng: random.Random) -> str:
    # lognormal around ~10 KB: median e^9.2 ~ 9.9 KB
    target = int(min(200_000, max(300, rng.lognormvariate(9.2, 0.6))))
    lines: list[str] = []
    size = 0
    while size < target:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        for start in range(0, len(paragraph), 72):
            lines.append(paragraph[start : start + 72])
        lines.append("")
        size += len(paragraph) + 2
    return "\r\n".join(lines)


# Of a shared inbox's history, the team's answers in its Sent folder: about one mail in
# four (the bench held customers' mail only up to the nineteenth wave, which flattered it:
# a first import triages the inbox's mail only as far as the Sent folder is imported).
REPLY_SHARE = 0.35  # of customers' mails, answered from Sent (~26% of the mailbox)


def generate(count: int, seed: int = 7) -> Iterator[bytes]:
    """`count` customers' messages for the inbox; about 1 in 60 is a real corpus file
    (CRLF-normalized)."""
    for _folder, raw in generate_mailbox(count, seed, replies=0.0):
        yield raw


def generate_mailbox(
    count: int, seed: int = 7, replies: float = REPLY_SHARE
) -> Iterator[tuple[str, bytes]]:
    """`count` messages of a shared mailbox as (folder, raw): customers' mail in INBOX
    (as generate), and the team's answers to a `replies` share of it in Sent, an hour or
    so later, in the thread (In-Reply-To, References)."""
    rng = random.Random(seed)
    corpus = _corpus_files()
    people = [
        (f"{rng.choice(FIRST)} {rng.choice(LAST)}", f"user{n}@customer{n % 97}.example")
        for n in range(800)
    ]
    names = {address: name for name, address in people}
    threads: list[tuple[str, list[str], str]] = []  # (subject, message ids, customer)
    start = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
    made = 0
    for number in range(count):
        if made == count:
            return
        made += 1
        if corpus and number % 60 == 59:
            yield "INBOX", corpus[(number // 60) % len(corpus)]
            continue
        when = start + timedelta(minutes=7 * number + rng.randint(0, 5))
        message_id = f"<bench.{number}.{rng.getrandbits(32):08x}@mail.example>"
        name, address = rng.choice(people)
        headers = [
            f"From: {name} <{address}>",
            "To: Support <support@shop.example>",
            f"Date: {email.utils.format_datetime(when).rsplit(' ', 1)[0]} {rng.choice(ZONES)}",
            f"Message-ID: {message_id}",
        ]
        if threads and rng.random() < 0.4:
            subject, ids, customer = rng.choice(threads[-300:])
            # the thread's own customer writes again (a stranger's reply is refused a join)
            headers[0] = f"From: {names[customer]} <{customer}>"
            headers.append(f"Subject: Re: {subject}")
            headers.append(f"In-Reply-To: {ids[-1]}")
            headers.append("References: " + " ".join(ids[-10:]))
            ids.append(message_id)
        else:
            subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))).capitalize()
            headers.append(f"Subject: {subject}")
            customer, ids = address, [message_id]
            threads.append((subject, ids, customer))
        yield "INBOX", _mime(headers, _body(rng), rng, number)
        if replies and made < count and rng.random() < replies:
            made += 1
            yield "Sent", _answer(number, when, subject, ids, names[customer], customer, rng)


def _answer(
    number: int,
    asked: datetime,
    subject: str,
    ids: list[str],
    name: str,
    address: str,
    rng: random.Random,
) -> bytes:
    """The team's answer to a customer's mail, in its thread."""
    when = asked + timedelta(minutes=rng.randint(20, 240))
    message_id = f"<answer.{number}.{rng.getrandbits(32):08x}@shop.example>"
    headers = [
        "From: Support <support@shop.example>",
        f"To: {name} <{address}>",
        f"Date: {email.utils.format_datetime(when)}",
        f"Message-ID: {message_id}",
        f"Subject: Re: {subject.removeprefix('Re: ')}",
        f"In-Reply-To: {ids[-1]}",
        "References: " + " ".join(ids[-10:]),
    ]
    ids.append(message_id)
    text = "\r\n".join(
        [f"Hello {name.split()[0]},", "", _sentence(rng), _sentence(rng), "", "Support"]
    )
    return _mime(headers, text, rng, number, html=False)


def _mime(
    headers: list[str], text: str, rng: random.Random, number: int, *, html: bool = True
) -> bytes:
    headers = [*headers, "MIME-Version: 1.0"]
    if html and rng.random() < 0.2:
        boundary = f"b{number}"
        markup = "<html><body><p>" + text.replace("\r\n\r\n", "</p><p>") + "</p></body></html>"
        headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = (
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{markup}\r\n"
            f"--{boundary}--\r\n"
        )
    else:
        headers.append("Content-Type: text/plain; charset=utf-8")
        body = text + "\r\n"
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


def _corpus_files() -> list[bytes]:
    index = CORPORA / "index.csv"
    if not index.exists():
        return []
    import csv

    files: list[bytes] = []
    with index.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["kind"] != "rfc822" or int(row["size"]) > 2_000_000:
                continue
            data = (CORPORA / row["file"]).read_bytes()
            if row["file"].endswith(".gz"):
                data = gzip.decompress(data)
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            files.append(data.replace(b"\0", b""))
    return files


def large_mail(number: int, size: int, seed: int = 11) -> bytes:
    """A customer mail of about `size` bytes: a short question and a base64 attachment."""
    rng = random.Random(seed + number)
    payload = rng.randbytes(size * 57 // 78)  # base64 with CRLF every 76 chars: x 78/57
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    head = (
        f"From: Big Sender {number} <big{number}@customer.example>\r\n"
        "To: Support <support@shop.example>\r\n"
        f"Subject: Scan of the contract, part {number}\r\n"
        f"Date: Mon, 1 Jun 2026 09:{number % 60:02d}:00 +0200\r\n"
        f"Message-ID: <large.{number}@customer.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Please find the scan attached.\r\n"
        "--b\r\nContent-Type: application/pdf; name=scan.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=scan.pdf\r\n\r\n"
    ).encode()
    return head + encoded + b"--b--\r\n"


def fill_large(port: int, user: str, count: int, size: int) -> None:
    """One APPEND per message: a MULTIAPPEND of them all would be one huge command."""
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=300) as client:
        client.login(user, PASSWORD)
        for number in range(count):
            client.append("INBOX", large_mail(number, size))


def fill(port: int, user: str, messages: Iterator[tuple[str, bytes]], count: int) -> float:
    """MULTIAPPEND each (folder, raw) into its folder, APPEND_CHUNK at a time."""
    started = time.perf_counter()
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=120) as client:
        client.login(user, PASSWORD)
        chunks: dict[str, list[bytes]] = {}
        done = 0
        for folder, raw in messages:
            chunk = chunks.setdefault(folder, [])
            chunk.append(raw)
            if len(chunk) == APPEND_CHUNK:
                done += _append(client, folder, chunk)
        for folder, chunk in chunks.items():
            done += _append(client, folder, chunk)
        assert done == count, (done, count)
    return time.perf_counter() - started


def _append(client: IMAPClient, folder: str, chunk: list[bytes]) -> int:
    if not chunk:
        return 0
    if not client.folder_exists(folder):
        client.create_folder(folder)
    client.multiappend(folder, chunk)
    appended = len(chunk)
    chunk.clear()
    return appended


def inbox_only(messages: Iterator[bytes]) -> Iterator[tuple[str, bytes]]:
    return (("INBOX", raw) for raw in messages)


# -- (a) raw fetch + parse -----------------------------------------------------------


def raw_rate(port: int, user: str, *, quiet_imaplib: bool = True) -> tuple[int, float]:
    """(a). `quiet_imaplib`: imaplib's debug level 1, as keepword's session sets it (at
    imapclient's 5, imaplib formats every fetched body with %r for a disabled logger:
    ~2.6 s of 20,000 mails here, which the figures up to the eighteenth wave included)."""
    started = time.perf_counter()
    cpu = time.process_time()
    handled = 0
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=120) as client:
        if quiet_imaplib:
            client._imap.debug = 1
        client.login(user, PASSWORD)
        for folder in ("INBOX", "Sent"):
            if not client.folder_exists(folder):
                continue
            client.select_folder(folder, readonly=True)
            uids = sorted(client.search("ALL"))
            for start in range(0, len(uids), FETCH_BATCH):
                batch = uids[start : start + FETCH_BATCH]
                for data in client.fetch(batch, ["BODY.PEEK[]"]).values():
                    parsed = mailparser.parse_from_bytes(data[b"BODY[]"])
                    _ = (parsed.subject, parsed.from_, parsed.to, parsed.date, parsed.message_id)
                    _ = (parsed.text_plain, parsed.text_html)
                    handled += 1
    LAST_RAW_CPU_SECONDS[0] = time.process_time() - cpu
    return handled, time.perf_counter() - started


# -- (b) keepword import in a subprocess ---------------------------------------------


def write_config(work: Path, port: int, user: str, database_url: str | None = None) -> Path:
    """`database_url`: the store (default: a SQLite file in the user's state dir)."""
    url = database_url or f"sqlite:///{work / user / 'keepword.db'}"
    secret = work / f"{user}.password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    config = work / f"{user}.toml"
    config.write_text(
        f"""[keepword]
state_dir = "{work / user}"
database_url = "{url}"

[[mailbox]]
name = "{user}"
address = "support@shop.example"
sent_folder = "Sent"

[mailbox.imap]
host = "127.0.0.1"
port = {port}
tls = "plain"
username = "{user}"
password_file = "{secret}"
fetch_batch = {FETCH_BATCH}
"""
    )
    return config


LAST_CPU_SECONDS = [0.0]  # user + system CPU of the last run_import (import + its workers)
LAST_RAW_CPU_SECONDS = [0.0]  # CPU of the last raw_rate (this process: fetch and parse)


def run_import(config: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of `keepword import` in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "keepword", "--config", str(config), "import", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    LAST_CPU_SECONDS[0] = usage.ru_utime + usage.ru_stime
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"keepword import failed ({process.returncode}):\n{errors}")
    return elapsed, int(usage.ru_maxrss)


def stored_count(config: Path) -> int:
    from sqlalchemy import func, select

    from keepword.config import load_config
    from keepword.store.db import make_engine
    from keepword.store.tables import message_location

    settings = load_config(config)
    engine = make_engine(settings.keepword.effective_database_url())
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(message_location)).scalar_one())


def case_count(config: Path) -> int:
    from sqlalchemy import func, select

    from keepword.config import load_config
    from keepword.store.db import make_engine
    from keepword.store.tables import case

    settings = load_config(config)
    engine = make_engine(settings.keepword.effective_database_url())
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(case)).scalar_one())


def triage_all(config: Path) -> tuple[float, int]:
    """Wall seconds to triage every stored message into its case (the history the daemon
    triages after an import: slices of 200, as `keepword run` does), and the cases opened."""
    from keepword.config import load_config
    from keepword.mail.render import Renderer
    from keepword.pipeline.context import MailboxContext
    from keepword.pipeline.triage import triage_pending
    from keepword.store.db import open_store

    settings = load_config(config)
    box = settings.mailbox[0]
    engine = open_store(settings.keepword.effective_database_url())
    renderer = Renderer.for_mailbox(settings, box)
    started = time.perf_counter()
    opened = 0
    while True:
        desk = MailboxContext(settings, box, engine, renderer, datetime.now(UTC))
        result = triage_pending(desk, limit=200)
        opened += result.opened
        if not result.more:
            break
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, opened


SEQUENTIAL = """
import sys
from keepword.cli import ingest as cli
from pathlib import Path
from keepword.config import load_config
cli._HistoryDesk.__call__ = lambda self, through: None  # store only: triage comes after
settings = load_config(Path(sys.argv[1]))
sys.exit(cli._import(settings, list(settings.mailbox), quiet=True))
"""


def import_then_triage(work: Path, port: int) -> tuple[float, float, int]:
    """(f): the history imported without triage, then triaged after (triage_all), as
    before pipeline.history, into a fresh store: wall seconds of the import alone and of
    both, cases opened."""
    sequential = work / "sequential"
    (sequential / "full").mkdir(parents=True)
    config = write_config(sequential, port, "full")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", SEQUENTIAL, str(config)],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the import without triage failed:\n{done.stderr[-2000:]}")
    imported = time.perf_counter() - started
    triaged, opened = triage_all(config)
    return imported, imported + triaged, opened


def on_postgres(work: Path, port: int, sqlite_seconds: float) -> float:
    """The full history imported and triaged into a private PostgreSQL (scripts/pgserver),
    as (b) and (d) on SQLite; prints and returns its time over SQLite's (issue 14: within
    1.5x)."""
    import psycopg
    from tests.fixtures.scripts import load_script

    pgserver = load_script("pgserver")
    directory = Path(tempfile.mkdtemp(prefix="kwpg-", dir="/tmp"))  # the server's user reaches it
    server = pgserver.start(directory)
    try:
        with psycopg.connect(
            host=server.host, port=server.port, user=server.user, dbname="postgres"
        ) as admin:
            admin.autocommit = True
            admin.execute("CREATE DATABASE history")
        config = write_config(work, port, "full", str(server.url("history")))
        seconds, _ = run_import(config)
        triage_seconds, opened = triage_all(config)
        total = seconds + triage_seconds
        ratio = total / sqlite_seconds
        print(
            f"(e) PostgreSQL: import {seconds:.1f} s + triage {triage_seconds:.1f} s "
            f"({opened} cases) = {total:.1f} s; {ratio:.2f}x SQLite's {sqlite_seconds:.1f} s "
            "(issue 14: <= 1.5)"
        )
        return ratio
    finally:
        pgserver.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


# -- (c) idle poll ---------------------------------------------------------------------


def idle_poll(config: Path) -> tuple[float, int]:
    """Median ms and IMAP commands of a poll that finds nothing (connection kept open)."""
    from keepword.config import load_config
    from keepword.domain.model import Origin
    from keepword.pipeline.ingest import Folder, default_session_factory, poll_folder
    from keepword.store.db import open_store

    settings = load_config(config)
    box = settings.mailbox[0]
    engine = open_store(settings.keepword.effective_database_url())
    session = default_session_factory(settings)(box)
    try:
        timings: list[float] = []
        commands: list[int] = []
        for _ in range(21):
            before = int(getattr(session, "commands", 0))
            started = time.perf_counter()
            inbox = Folder(engine, box, "INBOX", Origin.INBOX, lambda: datetime.now(UTC))
            result = poll_folder(session, inbox)
            timings.append((time.perf_counter() - started) * 1000)
            commands.append(int(getattr(session, "commands", 0)) - before)
            assert result.new == 0, result
    finally:
        session.close()
    timings.sort()
    return timings[len(timings) // 2], max(commands)


# -- report ----------------------------------------------------------------------------


def write_docs(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "## Import\n"
    if section in old:
        before, _, rest = old.partition(section)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        new = before + text + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only peak RSS: LARGE mails of LARGE_MB MB, then the N-message mailbox",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also the full history into a private PostgreSQL, against SQLite's time",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="also (f): the import without triage, then triage, as before pipeline.history",
    )
    parser.add_argument(
        "--inbox-only",
        action="store_true",
        help="customers' mail only, no answers in Sent (the bench up to the nineteenth wave)",
    )
    parser.add_argument("--large", type=int, default=12)
    parser.add_argument("--large-mb", type=float, default=43)
    args = parser.parse_args(argv)
    if args.memory:
        return memory(args.messages, args.large, int(args.large_mb * 1_000_000), args.write_docs)
    full_count = args.messages
    half_count = full_count // 2

    mailserver = load_mailserver()
    work = Path(tempfile.mkdtemp(prefix="kwb-", dir="/tmp"))
    work.chmod(0o755)  # Dovecot's auth and mail processes must traverse it
    try:
        instance = mailserver.start(
            work / "dc", users={"half": PASSWORD, "full": PASSWORD}, timeout=30
        )
        port = instance.imap_port
        print(f"dovecot on 127.0.0.1:{port}; generating and appending {full_count} messages")
        share = 0.0 if args.inbox_only else REPLY_SHARE
        fill_half = fill(port, "half", generate_mailbox(half_count, replies=share), half_count)
        fill_full = fill(port, "full", generate_mailbox(full_count, replies=share), full_count)
        print(f"MULTIAPPEND: {half_count / fill_half:.0f} and {full_count / fill_full:.0f} msgs/s")

        raw_count, raw_seconds = raw_rate(port, "full")
        raw, raw_cpu = raw_count / raw_seconds, LAST_RAW_CPU_SECONDS[0]
        print(f"(a) raw fetch + mail-parser: {raw_count} msgs in {raw_seconds:.1f} s = {raw:.0f}/s")
        loud_count, loud_seconds = raw_rate(port, "full", quiet_imaplib=False)
        print(
            f"(a) as up to the eighteenth wave (imaplib at imapclient's debug level 5): "
            f"{loud_seconds:.1f} s = {loud_count / loud_seconds:.0f}/s (not used)"
        )

        results: dict[str, tuple[int, float, int]] = {}
        import_cpu = 0.0
        for user, count in (("half", half_count), ("full", full_count)):
            config = write_config(work, port, user)
            seconds, rss = run_import(config)
            stored = stored_count(config)
            assert stored == count, f"{user}: stored {stored} of {count}"
            results[user] = (count, seconds, rss)
            import_cpu = LAST_CPU_SECONDS[0]
            print(
                f"(b) keepword import {count}: {seconds:.1f} s = {count / seconds:.0f}/s, "
                f"peak RSS {rss / 1024:.0f} MiB"
            )
        # The machine is shared: measure (a) again and keep its better figure, so the
        # ratio is never flattered by a slow first raw run.
        again_count, again_seconds = raw_rate(port, "full")
        if again_count / again_seconds > raw:
            raw_count, raw_seconds, raw = again_count, again_seconds, again_count / again_seconds
            raw_cpu = LAST_RAW_CPU_SECONDS[0]
            print(f"(a) again: {raw:.0f}/s (used)")
        full = results["full"]
        half = results["half"]
        end_to_end = full[0] / full[1]
        ratio = end_to_end / raw
        triage_seconds, left = triage_all(write_config(work, port, "full"))
        cased = full[0] / (full[1] + triage_seconds)
        print(
            f"(d) triage of what the import left: {triage_seconds:.1f} s, {left} more cases "
            f"({case_count(write_config(work, port, 'full'))} in all); "
            f"history into cases end to end {cased:.0f}/s = {cased / raw:.2f} of (a) "
            f"(issue 14: >= 0.8)"
        )
        cores = os.cpu_count() or 1
        print(
            f"CPU: (b) {import_cpu:.1f} s (keepword and its parse workers), (a) {raw_cpu:.1f} s; "
            f"on {cores} cores (b) cannot end before {import_cpu / cores:.1f} s, "
            f"{raw_seconds / (import_cpu / cores):.2f} of (a) at best"
        )
        if args.sequential:
            alone, one_then_other, opened = import_then_triage(work, port)
            print(
                f"(f) the import, then triage (before pipeline.history): {one_then_other:.1f} s, "
                f"{opened} cases; {full[0] / one_then_other / raw:.2f} of (a); the import "
                f"alone {alone:.1f} s, {full[0] / alone / raw:.2f} of (a)"
            )
        if args.postgres:
            on_postgres(work, port, full[1] + triage_seconds)
        growth = (full[2] - half[2]) / half[2] * 100
        idle_ms, idle_commands = idle_poll(write_config(work, port, "full"))
        print(f"b/a ratio: {ratio:.2f} (target >= 0.5)")
        print(f"peak RSS {half[0]} -> {full[0]}: {growth:+.1f}% (target < 20%)")
        print(f"idle poll on {full[0]} messages: {idle_ms:.2f} ms, {idle_commands} IMAP command(s)")
        if args.write_docs:
            write_docs(
                _report(
                    raw, raw_count, full, half, end_to_end, ratio, growth, idle_ms, idle_commands
                )
            )
            print("wrote docs/benchmarks.md")
        ok = ratio >= 0.5 and growth < 20
        return 0 if ok else 1
    finally:
        with contextlib.suppress(Exception):
            mailserver.stop(work / "dc")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def fill_generated(port: int, user: str, count: int) -> None:
    fill(port, user, inbox_only(generate(count)), count)


def in_child(target: Callable[..., object], *args: object) -> None:
    """Run target in a spawned process, so this one stays small.

    ru_maxrss of a child counts the parent's RSS at fork time (it survives exec), so a
    bench process swollen by generating mail would inflate every import it starts.
    """
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__} failed ({process.exitcode})")


def memory(count: int, large: int, large_size: int, docs: bool) -> int:
    """Peak RSS of `keepword import`: `large` mails of `large_size` bytes, then `count`."""
    mailserver = load_mailserver()
    work = Path(tempfile.mkdtemp(prefix="kwm-", dir="/tmp"))
    work.chmod(0o755)
    try:
        instance = mailserver.start(
            work / "dc", users={"large": PASSWORD, "full": PASSWORD}, timeout=30
        )
        port = instance.imap_port
        in_child(fill_large, port, "large", large, large_size)
        seconds, large_rss = run_import(write_config(work, port, "large"))
        assert stored_count(write_config(work, port, "large")) == large
        print(
            f"import of {large} mails of {large_size / 1e6:.0f} MB: {seconds:.1f} s, "
            f"peak RSS {large_rss / 1024:.0f} MiB, CPU {LAST_CPU_SECONDS[0]:.1f} s"
        )
        in_child(fill_generated, port, "full", count)
        seconds, full_rss = run_import(write_config(work, port, "full"))
        assert stored_count(write_config(work, port, "full")) == count
        print(
            f"import of {count} mails: {seconds:.1f} s, peak RSS {full_rss / 1024:.0f} MiB, "
            f"CPU {LAST_CPU_SECONDS[0]:.1f} s"
        )
        if docs:
            print(f"| {large} x {large_size / 1e6:.0f} MB | {large_rss / 1024:.0f} MiB |")
            print(f"| {count} normal | {full_rss / 1024:.0f} MiB |")
        return 0
    finally:
        with contextlib.suppress(Exception):
            mailserver.stop(work / "dc")
        shutil.rmtree(work, ignore_errors=True)


def _report(
    raw: float,
    raw_count: int,
    full: tuple[int, float, int],
    half: tuple[int, float, int],
    end_to_end: float,
    ratio: float,
    growth: float,
    idle_ms: float,
    idle_commands: int,
) -> str:
    cores = os.cpu_count()
    day = datetime.now(UTC).date().isoformat()
    return f"""## Import

`bench/import.py --messages {full[0]}` ({day}, {cores} cores, client and Dovecot on the
same machine over loopback; generated mail with threads, ~10 KB median bodies, 1 in 60
a real corpus file). Re-run with `make bench`.

| measure | figure | target |
|---|---|---|
| (a) raw: imapclient FETCH BODY.PEEK[] x{FETCH_BATCH} + mail-parser, {raw_count} msgs \
| {raw:.0f} msgs/s | |
| (b) `keepword import` end to end into SQLite, {full[0]} msgs | {end_to_end:.0f} msgs/s \
({full[1]:.1f} s) | |
| ratio b/a | {ratio:.2f} | >= 0.5 |
| peak RSS of `keepword import`, {half[0]} msgs | {half[2] / 1024:.0f} MiB | |
| peak RSS of `keepword import`, {full[0]} msgs | {full[2] / 1024:.0f} MiB | |
| RSS growth {half[0]} -> {full[0]} | {growth:+.1f}% | < 20% |
| idle poll on the {full[0]}-message mailbox | {idle_ms:.2f} ms, {idle_commands} IMAP \
command(s) | constant |

(a) is measured before and after the imports and the better figure is used (the machine
is shared). The import is a pipeline: a thread fetches batch k+1 while a spawned worker
process parses batch k and the main process stores batch k-1, each batch in its own
transaction with the folder cursor; so at most three batches ({FETCH_BATCH} messages
each) are in memory, whatever the mailbox size. Peak RSS is `ru_maxrss` from `wait4`,
the largest of the import process and its worker. The {half[0]}-message import reads a
mailbox Dovecot has not served before (it builds its cache on that first FETCH), the
{full[0]}-message one a mailbox (a) already read. The idle poll is one STATUS
(UIDVALIDITY UIDNEXT MESSAGES) compared with the stored cursor.
"""


if __name__ == "__main__":
    sys.exit(main())

"""Surge end to end: 2,000 new customer mails land at once; the real daemon answers them.

    .venv/bin/python bench/surge_daemon.py [--count 2000] [--history 0] [--database URL]

Starts a private Dovecot (scripts/mailserver) and an aiosmtpd sink that records when it
accepted each mail, writes a config file with the shipped defaults (only the servers,
the credentials and an all-week calendar are set) and runs the real daemon
(`keepword.runtime.daemon.Daemon` with `keepword.runtime.service.Service`) in this
process, like bench/latency.py. Once the daemon has polled the empty inbox and its
watcher is in IDLE, `--count` customer mails (each from its own address) are put into
the inbox with MULTIAPPEND, as fast as Dovecot takes them. Measured from the end of
that append: when the sink accepted the first and the last acknowledgement.

`--history H`: before the daemon starts, the mailbox holds H/2 customer mails of the
last months (one every 20 minutes, the newest a day old) in the inbox and the team's
answer to each in Sent; the daemon imports and triages them first, so every promise of
the surge is computed over a real sample of answered cases (on an empty store the
window is over the surge's own, unanswered cases only, which flatters it).

The limit, measured in the same run over the same mails: fetch them (BODY.PEEK[] in
the shipped batch size) and parse them (`keepword.mail.parse.parse_message`), then send
as many acknowledgements of the same size over one reused SMTP connection (aiosmtplib).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    # The body is in bench/surge_run.py, imported only here: the daemon's prefetch worker
    # is spawned (pipeline.prefetch) and imports the main script again, as __mp_main__.
    # In production that is the `keepword` script (`keepword.cli`: ~0.04 s); this file
    # with the body's imports (the daemon, the fixtures, the sink) cost the worker's start
    # ~0.6 s more, on the surge's second poll.
    from bench.surge_run import main

    sys.exit(main())

"""The soak: the real running service over simulated business days, faults on.

What runs: `python -m keepword --config FILE run` as a subprocess (the Daemon, its
scheduler, the IDLE watcher and the outbox sender; never `run --once`), with a config
that sets only what a user must (mailbox, address, IMAP, SMTP, team, lead, a holiday
country): every interval, window and limit is the shipped default. It talks to a real
private Dovecot (tests/fixtures/dovecot.py) and to an aiosmtpd relay that records what
it accepts and can fail on purpose (relay.py).

Time: all processes share one `SpedUpClock` (keepword.clock) through KEEPWORD_CLOCK:
virtual = anchor + (real - real_anchor) * speed. The daemon, each restart of it, the
CLI calls and this driver read the same virtual time without talking to each other,
so a SIGKILLed daemon resumes on the same clock. The run starts on Monday 27 April
2026 07:00 Europe/Berlin; Friday 1 May is a public holiday in DE, so five business
days span a holiday and a weekend.

Who does what:
- traffic.py  the seeded plan: customers (some in the same second, some without
              Date), follow-ups, staff replies in Sent or with the shared address in
              Cc, list mail, a ticket system, assign/close from the CLI, and the faults
              (SIGKILL + restart, Dovecot restart, relay 4xx, outage and slow answers,
              a 550 address, the IMAP password file missing for a while);
- driver.py   paces the plan on the clock, APPENDs mail with virtual INTERNALDATE,
              makes the robots answer what the relay accepted (out-of-office replies,
              bounces, the ticket system's new-subject answers), supervises the daemon
              and samples the job_run table;
- invariants.py  one function per promise keepword makes, each returning its figures
              and its violations, read from the store (read-only) and the relay's log;
- report.py   the table printed by the test and by scripts/soak.

Timing, honestly: at speed S one real second is S virtual seconds, so everything the
harness or the machine costs in real time is multiplied by S in virtual time (a 20 ms
poll is a minute at S=3000). The tolerances say so: a timed mail may come two chase
intervals plus 1.5 real seconds (1.5 S virtual seconds) late, plus any fault window
(and the 15-minute backoff cap after it) and any time the harness stood still that
overlaps. docs/soak.md has the numbers.
"""

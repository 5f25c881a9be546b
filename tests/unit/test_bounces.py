"""mail.bounces over the shared corpora's real bounces, and over reports built here that
name a mail of ours (flufl.bounce reads the formats; we read which mail it was)."""

from __future__ import annotations

import csv
from email.message import EmailMessage

import pytest

from keepword.mail import bounces
from keepword.mail.bounces import read_bounce
from tests.corpora import CORPORA, needs_corpora
from tests.fixtures.bounces import dsn

OURS = "kw.0123456789abcdef01234567@example.com"
ANN = "ann@example.org"


def corpus_bounces() -> list[str]:
    with (CORPORA / "index.csv").open(newline="") as index:
        return [row["file"] for row in csv.DictReader(index) if row["category"] == "bounce-dsn"]


@needs_corpora
def test_every_corpus_bounce_is_read_without_error_and_most_name_who_failed() -> None:
    files = corpus_bounces()
    read = [read_bounce((CORPORA / name).read_bytes()) for name in files]
    named = [b for b in read if b is not None]
    assert len(files) > 400
    # flufl.bounce names a permanently failed recipient in 352 of the 425 (the rest are
    # warnings, spam rejections without a recipient, or formats nobody reads).
    assert len(named) >= 0.8 * len(files)
    assert all(b.failed and all("@" in a and a == a.lower() for a in b.failed) for b in named)


@needs_corpora
def test_a_postfix_dsn_names_the_address_the_returned_mail_and_the_status() -> None:
    bounce = read_bounce((CORPORA / "rjbs-bounceparser/doesnotexist2.msg").read_bytes())
    assert bounce is not None
    assert bounce.failed == {"recipient@example.net"}
    assert bounce.about == ("20101207123005.31F623D60006@server4.example2.co.uk",)
    assert bounce.summary == "5.0.0 smtp; 550 Recipient does not exist"


@pytest.mark.parametrize("returned", ["headers", "message"])
def test_a_report_about_our_mail_names_it_from_the_returned_headers(returned: str) -> None:
    bounce = read_bounce(dsn(OURS, ANN, returned=returned))
    assert bounce is not None
    assert bounce.failed == {ANN}
    assert bounce.about == (OURS,)
    assert bounce.summary == "5.1.1 smtp; 550 5.1.1 no such user"


def test_the_reports_own_references_count_once() -> None:
    bounce = read_bounce(dsn(OURS, ANN, refer=True))
    assert bounce is not None and bounce.about == (OURS,)


def test_a_delay_warning_names_no_failure() -> None:
    assert read_bounce(dsn(OURS, ANN, action="delayed", status="4.4.7")) is None


def test_a_person_s_mail_is_no_bounce() -> None:
    mail = EmailMessage()
    mail["From"] = ANN
    mail["Subject"] = "Undelivered? My parcel never came"
    mail.set_content("Where is my parcel? It says delivery failed.\n")
    assert read_bounce(mail.as_bytes()) is None
    assert read_bounce(b"") is None
    assert read_bounce(b"\xff\xfe garbage \x00\r\n\r\n") is None


def test_a_detector_that_raises_is_no_bounce_and_no_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """flufl.bounce re-raises what a detector raises: hostile mail must not stop triage."""

    def choke(msg: object) -> None:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "hostile")

    monkeypatch.setattr(bounces, "all_failures", choke)
    assert read_bounce(dsn(OURS, ANN)) is None


def test_only_the_head_of_a_huge_report_is_read() -> None:
    huge = dsn(OURS, ANN, returned="message") + b"x" * (bounces.MAX_PARSE_BYTES + 10)
    bounce = read_bounce(huge)
    assert bounce is not None and bounce.failed == {ANN}


def test_a_report_names_at_most_max_named_ids_and_ours_first() -> None:
    """A hostile report with thousands of References stays one small lookup, and the
    returned mail's own Message-ID is never crowded out."""
    many = " ".join(f"<x{i}@spam.example>" for i in range(5000))
    raw = dsn(OURS, ANN).replace(b"MIME-Version:", f"References: {many}\r\nMIME-Version:".encode())
    bounce = read_bounce(raw)
    assert bounce is not None
    assert len(bounce.about) == bounces.MAX_NAMED and bounce.about[0] == OURS

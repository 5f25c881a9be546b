"""keepword's outgoing Message-IDs: the same on every retry, unguessable outside.

Until issue 12 an outgoing id was `kw.<sha256(dedup key)>@domain`. Dedup keys are
plain text ("ack:42"), so anyone could compute the id of the acknowledgement of case 42
and join that case through In-Reply-To. Now the id is an HMAC-SHA256 of the dedup key
under the installation's secret (32 random bytes kept in the store or a credential):

- deterministic: a retry after a crash makes the same id, so the Sent-folder check still
  tells that a mail already left;
- unguessable: without the secret the id of another case's mail cannot be made, and one
  id tells nothing about another (160 bits of the MAC, base32);
- still looked up, never parsed: what an id means (its case, its recipients) is the
  outbox row that holds it, never anything read out of the id or a subject.

Pure: the shell reads the secret and passes it in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import lru_cache

# The installation secret: at least this many random bytes (secrets.token_bytes(32)).
MIN_SECRET_BYTES = 32
ID_PREFIX = "kw2."  # "kw." was the unkeyed scheme; its ids stay valid through the outbox
_MAC_BYTES = 20  # 160 bits: 32 base32 characters


def check_secret(secret: bytes) -> bytes:
    """The secret itself, or ValueError when it is too short to key anything."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the installation secret has {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return secret


@lru_cache(maxsize=256)  # composing a mail asks twice (its header, its outbox row)
def keyed_message_id(secret: bytes, dedup_key: str, domain: str) -> str:
    """`kw2.<32 base32 of HMAC-SHA256(secret, dedup_key)>@domain`, bare (no brackets)."""
    mac = hmac.new(check_secret(secret), dedup_key.encode("utf-8"), hashlib.sha256).digest()
    token = base64.b32encode(mac[:_MAC_BYTES]).decode("ascii").lower()
    return f"{ID_PREFIX}{token}@{domain.lower()}"


def is_keyed_message_id(secret: bytes, dedup_key: str, domain: str, message_id: str) -> bool:
    """Whether `message_id` is the one keepword makes for `dedup_key` (constant time)."""
    expected = keyed_message_id(secret, dedup_key, domain)
    return hmac.compare_digest(expected.encode(), message_id.strip().strip("<>").lower().encode())


# -- identity of incoming mail -----------------------------------------------------------


def sender_digest(body_digest: str, sender: str | None) -> str:
    """The digest that tells a second sender's copy of a Message-ID and body apart."""
    who = (sender or "").strip().lower()
    return hashlib.sha256(f"{body_digest}\n{who}".encode()).hexdigest()


def identity_digest(
    body_digest: str, sender: str | None, stored: dict[str, str | None]
) -> str | None:
    """The content digest to store a message under, or None when it is already stored.

    `stored` maps the digests already stored for this (mailbox, Message-ID) to their
    sender. The same Message-ID and body from the same sender is the same message (a
    copy in another folder); from a different sender it is a different message (a forger
    reusing an id must not merge into, or vanish behind, the real one), stored under
    `sender_digest`. Existing rows keep their digest: no migration is needed.
    """
    who = (sender or "").strip().lower()
    if body_digest not in stored:
        return body_digest
    if (stored[body_digest] or "").strip().lower() == who:
        return None
    derived = sender_digest(body_digest, who)
    return None if derived in stored else derived

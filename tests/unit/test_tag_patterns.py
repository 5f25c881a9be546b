"""Case tags in subjects: one compiled pattern per set of prefixes, and no regex at all
for text without a "[" (domain.threads.tag_matches), read as the regex read them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from keepword.domain.threads import _BODY_LABELS, find_tag, find_tag_in_body
from keepword.domain.trust import own_subject, tags_in


def _alternatives(prefixes: Sequence[str]) -> str:
    names = sorted({p.strip() for p in prefixes if p.strip()}, key=len, reverse=True)
    return "|".join(re.escape(name) for name in names)


def _pattern(prefixes: Sequence[str]) -> str:
    return rf"\[\s*({_alternatives(prefixes)})\s*[-#\s]?\s*(\d{{1,12}})\s*\]"


def reference_tags_in(text: str, prefixes: Sequence[str]) -> tuple[str, ...]:
    """The long way: the pattern built and searched anew for every text."""
    if not _alternatives(prefixes):
        return ()
    found = (
        f"{m.group(1).upper()}-{int(m.group(2))}"
        for m in re.finditer(_pattern(prefixes), text, re.IGNORECASE)
    )
    return tuple(dict.fromkeys(found))


def reference_find_tag(subject: str, prefixes: Sequence[str]) -> str | None:
    if not _alternatives(prefixes):
        return None
    match = re.search(_pattern(prefixes), subject, re.IGNORECASE)
    return f"{match.group(1).upper()}-{int(match.group(2))}" if match else None


def reference_own_subject(original: str, reference: str, prefixes: Sequence[str]) -> str:
    text = original
    if _alternatives(prefixes):
        text = re.sub(_pattern(prefixes), " ", text, flags=re.IGNORECASE)
    return f"{' '.join(text.split()) or '(no subject)'} [{reference}]"


def reference_find_tag_in_body(body: str, prefixes: Sequence[str]) -> str | None:
    alternatives = _alternatives(prefixes)
    if not alternatives or not body:
        return None
    if not re.search(rf"(?:{alternatives})\s*[-#\s]?\s*\d", body, re.IGNORECASE):
        return None
    labelled = re.search(
        rf"(?:{_BODY_LABELS})\s*[:#]?\s*({alternatives})-(\d{{1,12}})\b", body, re.IGNORECASE
    )
    if labelled:
        return f"{labelled.group(1).upper()}-{int(labelled.group(2))}"
    return reference_find_tag(body, prefixes)


PREFIXES = st.lists(st.sampled_from(["KW", "kw", "SUP", "Help-Desk", "K", " ", ""]), max_size=3)
# Tag-shaped pieces among arbitrary text, so matches are common and so are near misses.
PIECES = st.sampled_from(
    [
        *("[KW-42]", "[ kw # 7 ]", "[SUP 12]", "[Help-Desk-3]", "[K-1]", "[KW-]", "[KW-1"),
        *("KW-5]", "[", "Case reference: KW-8", "Ref. sup-3", "\u212aw-4", "referenz:KW-2\n"),
    ]
)
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=12)), max_size=6).map("".join)


@settings(max_examples=400)
@given(TEXT, PREFIXES)
def test_tags_read_as_the_pattern_built_anew_reads_them(text: str, prefixes: list[str]) -> None:
    assert tags_in(text, prefixes) == reference_tags_in(text, prefixes)
    assert find_tag(text, prefixes) == reference_find_tag(text, prefixes)
    assert own_subject(text, "KW-1", prefixes) == reference_own_subject(text, "KW-1", prefixes)
    assert find_tag_in_body(text, prefixes) == reference_find_tag_in_body(text, prefixes)


def test_text_without_a_bracket_has_no_tag_and_keeps_its_words() -> None:
    assert tags_in("KW-42 about my order", ["KW"]) == ()
    assert find_tag("KW-42 about my order", ["KW"]) is None
    assert own_subject("KW-42 about my order", "KW-1", ["KW"]) == "KW-42 about my order [KW-1]"
    assert tags_in("Re: [kw #42] order [KW-42] [SUP-1]", ("KW", "SUP")) == ("KW-42", "SUP-1")


def test_the_body_finds_a_bracketed_tag_after_its_label_search() -> None:
    assert find_tag_in_body("see [KW-9] below", ["KW"]) == "KW-9"
    assert find_tag_in_body("Case reference: kw-12\n[KW-9]", ["KW"]) == "KW-12"
    assert find_tag_in_body("nothing here", ["KW"]) is None

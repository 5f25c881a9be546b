"""The pace of CPython's cyclic garbage collector in a keepword process.

CPython collects its youngest generation after every 700 net allocations of container
objects. A first import keeps each batch's messages, rows and facts alive across many
of those, so the collector traced and promoted them again and again: on a 20,000-mail
history, ~1,360 young, 124 middle and 11 full collections took ~1.1 s of the main
process, whose GIL bounds the import (~8% of its CPU). After 10,000 allocations: 26,
3 and none, 0.15 s (docs/benchmarks.md). Reference counting frees nearly all that
keepword drops; only cyclic garbage (an exception's traceback and its frames) waits
longer for the collector, and a young generation holds at most ~10,000 objects more.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 10_000


def pace_collector() -> None:
    """Collect the young generation after YOUNG_GENERATION_THRESHOLD net allocations;
    a higher threshold set before (an embedding program's) is kept, as are the older
    generations' thresholds."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_GENERATION_THRESHOLD), middle, old)

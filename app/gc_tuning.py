"""The cyclic garbage collector, set for a serving process (docs/benchmarks.md, step 11).

Reference counting frees almost everything a reply allocates. What it cannot free is left in
cycles by the libraries: every httpx `Response` refers to itself through its stream, and each
task sse-starlette cancels at a stream's end keeps its `CancelledError`, whose traceback holds
the frames it passed through. Python's defaults clean these up at a high price. A young
collection runs every 700 allocations and walks every young object, including those of the
replies still in flight. Every few seconds a full collection walks all ~80,000 objects that
start-up left alive (modules, tables, catalogs) and stops every stream while it does.

Measured with a `gc.callbacks` probe at 200 streams, this cost ~1.0 ms of CPU per reply, about
12% of the server's CPU, and each full collection paused the loop for ~100 ms. Two changes cut
it to ~0.2 ms per reply, with no full collection while the load lasted:

- once start-up is done, `gc.freeze()`: what is alive then lives as long as the process, and
  no collection walks it again;
- a young collection every `threshold` allocations (10,000 by default): a reply's objects are
  mostly freed before one runs, so fewer of them are walked. Garbage cycles wait a little
  longer (peak RSS at 200 streams: +0.6 MB).

`GC_THRESHOLD=0` leaves the collector as Python sets it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Apps that have tuned the collector and not yet stopped. Tests run several apps in one
# process: only the first to start tunes it, and only the last to stop puts it back.
_serving = 0
_python_threshold = gc.get_threshold()


@contextmanager
def tuned_for_serving(threshold: int) -> Iterator[None]:
    """Freeze what start-up left alive and collect young objects every `threshold` allocations,
    until the block ends."""
    global _serving, _python_threshold
    if not threshold:
        yield
        return
    if _serving == 0:
        _python_threshold = gc.get_threshold()
        # No gc.collect() first, as is usual before freezing: at the end of our start-up it
        # found nothing to free, and took ~45 ms (every test's app start pays it).
        gc.freeze()
        gc.set_threshold(threshold, *_python_threshold[1:])
    _serving += 1
    try:
        yield
    finally:
        _serving -= 1
        if _serving == 0:
            gc.set_threshold(*_python_threshold)
            gc.unfreeze()

"""Start-up's objects are frozen, out of the garbage collector's way (docs/benchmarks.md, step 11).

Reference counting frees almost everything a reply allocates. What it cannot free is left in
cycles by the libraries: every httpx `Response` refers to itself through its stream, and each
task sse-starlette cancels at a stream's end keeps its `CancelledError`, whose traceback holds
the frames it passed through. So the cyclic collector runs all the time under load, and every
few seconds it makes a full pass, which also walks the ~80,000 objects that start-up left
alive (modules, tables, catalogs) and that will live as long as the process. Nothing runs
while it does: the longest pause measured was 79-85 ms at 50 streams, 120 ms at 200
(`python -m bench.collector`, which measures with and without the freeze).

`gc.freeze()` once start-up is done takes those objects out of every later collection: the
longest pause fell to 14-26 ms at 50 streams and 62 ms at 200. The server's CPU per reply did
not change measurably. Nor did it with the young threshold raised to 2,000 or 10,000, which
cut the collector's own time further but made young pauses longer and peak memory higher, so
Python's thresholds stay.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Apps serving in this process. Tests run several apps in one process: the first to start
# freezes, and only the last to stop unfreezes, so the test process ends as it began.
_serving = 0


@contextmanager
def start_up_frozen() -> Iterator[None]:
    """Freeze every object alive now until the block ends."""
    global _serving
    if _serving == 0:
        # No gc.collect() first, as is usual before freezing: at the end of our start-up it
        # found nothing to free, and took ~45 ms (every test's app start would pay it; timed
        # once by hand, no benchmark reruns it).
        gc.freeze()
    _serving += 1
    try:
        yield
    finally:
        _serving -= 1
        if _serving == 0:
            gc.unfreeze()

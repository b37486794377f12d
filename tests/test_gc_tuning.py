"""The garbage collector while the app serves: start-up's objects frozen, young collections
every GC_THRESHOLD allocations, and Python's own settings back once the last app stops.
(What it saves is measured by `python -m bench.gc`, not here.)"""

from __future__ import annotations

import gc


def test_serving_freezes_start_up_and_collects_young_objects_less_often(start_server):
    python_threshold = gc.get_threshold()
    assert gc.get_freeze_count() == 0

    server = start_server()
    assert gc.get_threshold() == (10_000, *python_threshold[1:])
    assert gc.get_freeze_count() > 10_000  # the modules, tables and catalogs of start-up

    server.stop()
    assert gc.get_threshold() == python_threshold
    assert gc.get_freeze_count() == 0


def test_the_last_app_to_stop_puts_the_collector_back(start_server):
    python_threshold = gc.get_threshold()
    first, second = start_server(), start_server()

    first.stop()
    assert gc.get_threshold()[0] == 10_000
    assert gc.get_freeze_count() > 0

    second.stop()
    assert gc.get_threshold() == python_threshold
    assert gc.get_freeze_count() == 0


def test_gc_threshold_0_leaves_the_collector_alone(start_server):
    python_threshold = gc.get_threshold()
    server = start_server(gc_threshold=0)
    assert gc.get_threshold() == python_threshold
    assert gc.get_freeze_count() == 0
    server.stop()

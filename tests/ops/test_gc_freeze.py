"""Start-up's objects are frozen while the app serves, and unfrozen once the last app stops.
(What the freeze saves, the collector's pauses, is measured by `python -m bench.collector`.)"""

from __future__ import annotations

import gc


def test_serving_freezes_what_start_up_left_alive(start_server):
    assert gc.get_freeze_count() == 0

    server = start_server()
    assert gc.get_freeze_count() > 10_000  # the modules, tables and catalogs of start-up

    server.stop()
    assert gc.get_freeze_count() == 0


def test_the_last_app_to_stop_unfreezes(start_server):
    first, second = start_server(), start_server()

    first.stop()
    assert gc.get_freeze_count() > 10_000  # the second app's start-up, still frozen

    second.stop()
    assert gc.get_freeze_count() == 0

"""The background prefetch thread: order, errors in order, and a clean stop when the consumer quits early."""

import threading
import time

import pytest

from deepearth_jax.data.background import background_iter, ordered_map


def test_yields_transformed_items_in_order():
    n = int(time.time_ns() % 50) + 10
    assert list(background_iter(range(n), depth=3, transform=lambda x: x * x)) == [x * x for x in range(n)]


def test_source_errors_surface_after_the_items_before_them():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in background_iter(source(), depth=1):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_thread():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    iterator = background_iter(endless(), depth=2, name="test-prefetch")
    assert next(iterator) == 0
    iterator.close()
    assert threading.active_count() == before
    assert len(produced) <= 4  # at most depth items ahead, plus the one in hand
    with pytest.raises(ValueError, match="depth"):
        next(background_iter([], depth=0))


def test_ordered_map_keeps_order_bounds_work_and_raises_in_order():
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (i % 3))  # finish out of order
        if i == 7:
            raise ValueError("item 7")
        return i * i

    results = ordered_map(work, range(20), workers=3, depth=4)
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert max(started) <= 5 + 4  # never more than `depth` items ahead of the consumer
    with pytest.raises(ValueError, match="item 7"):
        list(results)

"""Background threads that work ahead on an iterator (convert's decoding, device placement)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


def background_iter(
    items: Iterable[T], depth: int = 1, transform: Callable[[T], Any] | None = None, name: str = "prefetch"
) -> Iterator[Any]:
    """Yields `transform(item)` for each item, computed on a daemon thread at most `depth` items ahead.

    Work that releases the GIL (pyarrow decoding, host-to-device copies) then overlaps the caller's. An error
    in the source or the transform is raised here, in order; closing the generator stops and joins the thread.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(transform(item) if transform is not None else item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failure(e))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def ordered_map(
    function: Callable[[T], Any],
    items: Iterable[T],
    workers: int,
    depth: int | None = None,
    name: str = "map",
) -> Iterator[Any]:
    """Yields `function(item)` for each item, in order, computed on `workers` threads at most `depth` items
    ahead (default 2 x workers), so that work which releases the GIL (pyarrow decoding) runs in parallel
    while memory stays bounded. An error is raised here, in order; closing the generator cancels the rest."""
    import collections
    import concurrent.futures

    depth = depth or 2 * workers
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
    pending: collections.deque = collections.deque()
    items = iter(items)
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)

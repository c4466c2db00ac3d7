"""Read-ahead: run a generator in a daemon thread, consume its items in this one.

``Prefetch(produce, depth)`` is a concurrency stage of its own, apart from what it
produces: the queue between the two threads is bounded (the producer runs at most
``depth`` items ahead, so memory stays flat), an exception in the producer is re-raised in
the consumer, and leaving the ``with`` early stops the producer. ``ShardWorker.encode_shard``
uses it so that streaming and decoding the tar (Pillow releases the GIL) overlaps the model
(torch releases it too).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class _Failure:
    """What the producer thread hands over when it raised: the consumer re-raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()  # the producer finished: the end of the items


class Prefetch:
    """Run ``produce()`` (an iterator) in a daemon thread; iterate its items here.

    The queue is bounded, so the producer runs at most ``depth`` items ahead. An exception in
    the producer is re-raised in the consumer; leaving the ``with`` early stops the producer.
    """

    def __init__(self, produce: Callable[[], Iterator[Any]], depth: int) -> None:
        self._produce = produce
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-prefetch", daemon=True)
        self.wait_seconds = 0.0  # time the consumer spent waiting for the producer

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._produce():
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(_Failure(exc))

    def __enter__(self) -> Prefetch:
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[Any]:
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            self.wait_seconds += time.perf_counter() - t0
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + 60
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        if self._thread.is_alive():  # stuck in a read: it is a daemon, leave it behind
            log.warning("prefetch thread still busy after 60 s; abandoning it")

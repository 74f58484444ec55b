"""Three-stage streaming: a reader thread, compute on the calling thread, a writer thread.

    reader thread ──(read(item))──▶ compute (caller's thread) ──(compute(item, x))──▶ writer thread (write)

Bounded queues (`prefetch` deep) keep host memory proportional to a few blocks, never to the volume.
The first exception in any stage stops the others and is re-raised in the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")
_DONE = object()


class _Stop(Exception):
    """Raised inside a stage when another stage failed."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def run_stream(items: Sequence[Item], read: Callable[[Item], Any], compute: Callable[[Item, Any], Any],
               write: Callable[[Item, Any], None], prefetch: int = 2) -> None:
    """For each item in order: read (reader thread) → compute (this thread) → write (writer thread)."""
    stop = threading.Event()
    errors: list[BaseException] = []
    read_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    write_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
        def stage() -> None:
            try:
                body()
            except _Stop:
                pass
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)
                stop.set()
        return stage

    def reader() -> None:
        for item in items:
            _put(read_q, (item, read(item)), stop)
        _put(read_q, _DONE, stop)

    def writer() -> None:
        while (entry := _get(write_q, stop)) is not _DONE:
            write(*entry)

    threads = [threading.Thread(target=guarded(reader), name="emseg-reader", daemon=True),
               threading.Thread(target=guarded(writer), name="emseg-writer", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while (entry := _get(read_q, stop)) is not _DONE:
            item, value = entry
            _put(write_q, (item, compute(item, value)), stop)
        _put(write_q, _DONE, stop)
        threads[1].join()
    except _Stop:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        if errors:
            stop.set()
        for thread in threads:
            thread.join(timeout=30)
    if errors:
        raise errors[0]

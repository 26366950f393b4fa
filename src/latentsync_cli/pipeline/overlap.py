"""Three stages that overlap: a producer thread, the calling thread, a consumer thread.

    produce() ---queue(2)---> process(items) ---queue(2)---> consume(items)
    (CPU thread)              (this thread: the GPU work)     (CPU thread)

Each stage is written as plain iteration: `produce` is a generator, `process`
takes an iterator and is one, `consume` takes an iterator. The bounded queues
keep at most two items in flight between stages, so memory stays flat.

Errors: the first exception in any stage stops every stage (they poll a
shared stop flag while they wait on a queue) and is raised to the caller once
all threads have ended; KeyboardInterrupt in the calling thread does the same.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

QUEUE_SIZE = 2
POLL_S = 0.05  # how often a waiting stage looks at the stop flag
_DONE = object()  # end of a stream


class Stopped(Exception):
    """Raised inside a stage when another stage has failed."""


class StageQueue:
    """A bounded queue whose waits give up when the stop flag is set."""

    def __init__(self, stop: threading.Event, size: int = QUEUE_SIZE):
        self.stop = stop
        self.queue: queue.Queue = queue.Queue(maxsize=size)

    def put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise Stopped

    def __iter__(self) -> Iterator[Any]:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                item = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            yield item


class StageThread(threading.Thread):
    """Runs one stage; keeps its exception and sets the stop flag when it fails."""

    def __init__(self, name: str, body: Callable[[], Any], stop: threading.Event):
        super().__init__(name=name, daemon=True)  # daemon: a stuck stage can never keep the process alive
        self.body = body
        self.stop = stop
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            self.result = self.body()
        except Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            self.error = error
            self.stop.set()


def run_overlapped(
    produce: Callable[[], Iterable[Any]],
    process: Callable[[Iterator[Any]], Iterable[Any]],
    consume: Callable[[Iterator[Any]], Any],
    queue_size: int = QUEUE_SIZE,
) -> Any:
    """Run the three stages concurrently; returns what `consume` returns."""
    stop = threading.Event()
    inputs = StageQueue(stop, queue_size)
    outputs = StageQueue(stop, queue_size)

    def producer_body() -> None:
        items = produce()
        try:
            for item in items:
                inputs.put(item)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's `finally` blocks (e.g. closing a decoder) run now
        inputs.put(_DONE)

    producer = StageThread("producer", producer_body, stop)
    consumer = StageThread("consumer", lambda: consume(iter(outputs)), stop)
    producer.start()
    consumer.start()
    try:
        for item in process(iter(inputs)):
            outputs.put(item)
        outputs.put(_DONE)
        _wait_for(consumer)
    except Stopped:
        pass  # a thread failed: its error is raised below
    except BaseException:
        stop.set()
        _stop_all((producer, consumer))
        raise
    stop.set()  # on success both threads have finished; on failure this releases the other one
    _stop_all((producer, consumer))
    for thread in (producer, consumer):
        if thread.error is not None:
            raise thread.error
    return consumer.result


def _wait_for(thread: threading.Thread) -> None:
    # join() in short slices, so that Ctrl-C reaches this thread while it waits
    while thread.is_alive():
        thread.join(POLL_S)


def _stop_all(threads: tuple[StageThread, ...], timeout_s: float = 30.0) -> None:
    for thread in threads:
        thread.join(timeout_s)


class ReadAhead:
    """An iterator that runs `items` on a thread of its own, up to `depth` items ahead of its reader.

    For the decoder: ffmpeg can only decode the next frame once the last one
    has been read from its pipe, so without this decoding and face tracking
    take turns on one thread. `close()` stops the thread and closes `items`
    (a generator's `finally` runs there); an exception in `items` is raised
    to the reader.
    """

    def __init__(self, items: Iterator[Any], depth: int):
        self.items = items
        self.stop = threading.Event()
        self.queue = StageQueue(self.stop, depth)
        self.stream = iter(self.queue)
        self.thread = StageThread("read-ahead", self._fill, self.stop)
        self.thread.start()

    def _fill(self) -> None:
        try:
            for item in self.items:
                self.queue.put(item)
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                close()
        self.queue.put(_DONE)

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.stream)
        except Stopped:
            if self.thread.error is not None:
                raise self.thread.error from None
            raise

    def close(self) -> None:
        self.stop.set()
        _stop_all((self.thread,))

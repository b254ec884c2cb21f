"""Group commit per device: readings that arrive while a commit is under way go to the sink together.

A device that notifies faster than the journal commits would otherwise queue one commit (one fsync) per
notification, each waiting for the one before. Here each reading joins the open batch; the first waiter
that finds no commit in progress hands the whole open batch to the sink (`submit_many`: one step, one
commit), and everyone whose reading is in it returns when that commit returned. So a confirmed notification
is still answered only after its readings are durable, batches are committed one after the other in the
order they were opened (the order per point is kept), and nothing is acknowledged that was not accepted:
when the sink refuses a batch (NotAccepted), or its commit is cancelled, every reading in it fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.core.ports import Reading, ReadingSink
from gateway.domain.errors import NotAccepted


@dataclass(eq=False)
class Batch:
    """Readings committed together, with what to do once they were accepted or refused."""

    done: asyncio.Future[None]
    readings: list[Reading] = field(default_factory=list)
    accepted: list[Callable[[], None]] = field(default_factory=list)
    refused: list[Callable[[], None]] = field(default_factory=list)
    error: NotAccepted | None = None  # set before `done` resolves, when the sink did not take the batch


class GroupCommit:
    """One open batch and at most one batch being committed; see the module docstring."""

    def __init__(self, sink: ReadingSink) -> None:
        self.sink = sink
        self.commits = 0  # batches handed to the sink
        self.largest = 0  # readings in the largest of them
        self._open: Batch | None = None
        self._committing: Batch | None = None

    def add(self, reading: Reading, accepted: Callable[[], None], refused: Callable[[], None]) -> Batch:
        """Put a reading in the open batch (synchronously: no other reading can come between) and return it."""
        batch = self._open
        if batch is None:
            batch = self._open = Batch(asyncio.get_running_loop().create_future())
        batch.readings.append(reading)
        batch.accepted.append(accepted)
        batch.refused.append(refused)
        return batch

    async def wait(self, batch: Batch) -> None:
        """Return once `batch` is committed, committing it here if no one else is; NotAccepted if refused."""
        while not batch.done.done():
            current = self._committing
            if current is None:
                assert batch is self._open  # a batch not done is the one committing or the open one
                self._open, self._committing = None, batch
                try:
                    await self._commit(batch)
                finally:
                    self._committing = None
            else:
                await asyncio.wait([current.done])
        if batch.error is not None:
            raise batch.error

    async def _commit(self, batch: Batch) -> None:
        self.commits += 1
        self.largest = max(self.largest, len(batch.readings))
        try:
            if len(batch.readings) == 1:
                await self.sink.submit(batch.readings[0])
            else:
                await self.sink.submit_many(batch.readings)
        except BaseException as exc:
            batch.error = exc if isinstance(exc, NotAccepted) else NotAccepted(f"commit did not complete: {exc!r}")
            try:
                for refused in batch.refused:
                    refused()
            finally:  # the other waiters are released whatever a callback does
                batch.done.set_result(None)
            raise
        try:
            for accepted in batch.accepted:
                accepted()
        finally:
            batch.done.set_result(None)

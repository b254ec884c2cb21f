"""One loop_write(), few TCP segments: TCP_CORK around the burst of packets paho writes.

paho writes every queued packet with its own send(), and with TCP_NODELAY (which we need: Nagle and delayed
ACKs add ~40 ms per hop) the sends leave as many small segments (Linux's autocorking merges some: 100 publishes
of one burst left as 12 segments in tests/integration/delivery/test_session_cork.py), each waking the broker
and running its receive path. In an alarm flood one loop_write() carries tens of packets (publishes, PUBACKs):
corked, the kernel queues them and sends them as one segment (1 in that test) when the cork is pulled right
after the write, so nothing waits. A single packet goes out as before, at the
price of two setsockopt calls. Linux only (TCP_CORK); where it does not exist this is a no-op.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

CORK: int | None = getattr(socket, "TCP_CORK", None)


@contextlib.contextmanager
def corked(sock: socket.socket) -> Iterator[None]:
    """Hold back partial segments while the block writes; push everything out when it ends (even on error)."""
    if CORK is None:
        yield
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, CORK, 1)
    except OSError:  # not a TCP socket (a test's socketpair) or already closed: write uncorked
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # closed meanwhile: nothing left to push
            sock.setsockopt(socket.IPPROTO_TCP, CORK, 0)

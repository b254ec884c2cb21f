"""A small MQTT 3.1.1 broker (amqtt) for the demo only: bound to loopback, nothing kept on disk.

Production uses a real broker (Mosquitto or the meldkamer's own) with TLS. Run as its own process
(`python -m gateway.tools.embedded_broker PORT`) so the demo's simulators and receiver keep a core to themselves.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from amqtt.broker import Broker


def broker_config(port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    broker = Broker(broker_config(port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"broker listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()

"""A consumer that takes deliveries and never settles them, until it is killed.

    python -m tests._holding_consumer TARGET TOPIC GROUP CONSUMER COUNT

Prints each delivery as "<delivery id> <tracking id>", then "HOLDING" once it
holds COUNT deliveries, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys

import packetbus


async def main(target: str, topic: str, group: str, consumer: str, count: int) -> None:
    async with await packetbus.Client.connect(target) as client:
        held = 0
        async with client.consume(
            topic, group, consumer=consumer, max_outstanding_packets=count
        ) as deliveries:
            async for delivery in deliveries:
                print(delivery.delivery_id, delivery.packet.packet.tracking_id, flush=True)
                held += 1
                if held == count:
                    print("HOLDING", flush=True)
                    await asyncio.Event().wait()


if __name__ == "__main__":
    target, topic, group, consumer, count = sys.argv[1:6]
    asyncio.run(main(target, topic, group, consumer, int(count)))

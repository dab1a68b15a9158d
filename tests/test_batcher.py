"""The dispatch batcher's timing: send at once when idle, batch only behind a call
in flight, and keep the bounds, flow control, deadlines, order and close/cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import pytest

import packetbus
from packetbus._batcher import Batcher
from packetbus.v1 import packet_service_pb2
from tests.conftest import new_packet


class FakeSend:
    """A Dispatch call that answers when told to (or at once), recording each batch."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.hold = hold
        self.release = asyncio.Event()

    async def __call__(
        self, packets: Sequence[packetbus.Packet], deadline: float
    ) -> list[packet_service_pb2.DispatchResult]:
        self.batches.append([p.tracking_id for p in packets])
        if self.hold:
            await self.release.wait()
        return [packet_service_pb2.DispatchResult(tracking_id=p.tracking_id) for p in packets]


def settings(**kw: float) -> packetbus.BatchSettings:
    return packetbus.BatchSettings(**kw)  # type: ignore[arg-type]


async def test_a_lone_packet_is_sent_without_waiting_for_the_window() -> None:
    send = FakeSend()
    batcher = Batcher(send, settings(max_latency=10.0))
    packet = new_packet("t")
    started = time.monotonic()
    result = await (await batcher.submit(packet, deadline=time.monotonic() + 30))
    assert time.monotonic() - started < 1.0  # not the 10 s window
    assert result.tracking_id == packet.tracking_id
    assert send.batches == [[packet.tracking_id]]


async def test_packets_submitted_together_while_idle_share_one_call() -> None:
    send = FakeSend()
    batcher = Batcher(send, settings(max_latency=10.0))
    packets = [new_packet("t") for _ in range(5)]
    futures = [await batcher.submit(p, deadline=1e12) for p in packets]
    results = await asyncio.gather(*futures)
    assert [r.tracking_id for r in results] == [p.tracking_id for p in packets]
    assert send.batches == [[p.tracking_id for p in packets]]


async def test_packets_behind_a_call_in_flight_go_together_when_it_completes() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_latency=10.0))
    first = await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0.05)
    assert len(send.batches) == 1  # the first went at once
    behind = [new_packet("t") for _ in range(7)]
    futures = [await batcher.submit(p, deadline=1e12) for p in behind]
    await asyncio.sleep(0.05)
    assert len(send.batches) == 1  # they wait behind the call, not sent one by one
    send.release.set()
    await first
    results = await asyncio.gather(*futures)
    assert [r.tracking_id for r in results] == [p.tracking_id for p in behind]
    assert send.batches[1] == [p.tracking_id for p in behind]
    assert len(send.batches) == 2


async def test_behind_a_slow_call_the_window_sends_beside_it() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_latency=0.05, max_concurrent_batches=2))
    await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0.01)
    await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0.01)
    assert len(send.batches) == 1
    await asyncio.sleep(0.2)
    assert len(send.batches) == 2  # max_latency bounds the wait behind a stuck call
    send.release.set()
    await batcher.close()


async def test_count_bound_splits_batches_behind_a_call() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_latency=10.0, max_packets=3, max_concurrent_batches=8))
    await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0.01)
    for _ in range(7):
        await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0.01)
    assert [len(b) for b in send.batches] == [1, 3, 3]
    send.release.set()
    await batcher.flush()
    assert [len(b) for b in send.batches] == [1, 3, 3, 1]


async def test_byte_bound_splits_batches() -> None:
    send = FakeSend(hold=True)
    size = new_packet("t").ByteSize()
    batcher = Batcher(send, settings(max_latency=10.0, max_bytes=2 * size + 1))
    futures = [await batcher.submit(new_packet("t"), deadline=1e12) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert [len(b) for b in send.batches] == [2, 2]  # the fifth waits behind them
    send.release.set()
    await asyncio.gather(*futures)
    assert [len(b) for b in send.batches] == [2, 2, 1]


async def test_a_deadline_passes_while_the_call_is_in_flight() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings())
    packet = new_packet("t")
    short = await batcher.submit(packet, deadline=time.monotonic() + 0.05)
    long = await batcher.submit(new_packet("t"), deadline=time.monotonic() + 30)
    with pytest.raises(packetbus.PacketbusError) as caught:
        await short
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.outcome_unknown
    assert packet.tracking_id in str(caught.value)
    assert not long.done()  # the other packet of the batch still waits for its answer
    send.release.set()
    await long


async def test_at_its_deadline_a_packet_gets_its_calls_own_error_not_a_guess() -> None:
    """The call runs to the batch's latest deadline and ends with its own error (here
    UNAVAILABLE: never sent), which the batcher's timer does not pre-empt."""
    deadline = time.monotonic() + 0.1

    async def fails_at_the_deadline(
        packets: Sequence[packetbus.Packet], until: float
    ) -> list[packet_service_pb2.DispatchResult]:
        await asyncio.sleep(max(0.0, until - time.monotonic()) + 0.02)  # just after it
        raise packetbus.PacketbusError(grpc.StatusCode.UNAVAILABLE, "no bearer token")

    batcher = Batcher(fails_at_the_deadline, settings())
    result = await batcher.submit(new_packet("t"), deadline=deadline)
    with pytest.raises(packetbus.PacketbusError) as caught:
        await result
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "no bearer token"


async def test_a_call_that_outlives_its_deadline_still_fails_its_packets_soon_after() -> None:
    send = FakeSend(hold=True)  # never answers
    batcher = Batcher(send, settings())
    packet = new_packet("t")
    started = time.monotonic()
    result = await batcher.submit(packet, deadline=started + 0.05)
    with pytest.raises(packetbus.PacketbusError) as caught:
        await result
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert packet.tracking_id in caught.value.message
    assert caught.value.outcome_unknown
    assert time.monotonic() - started < 5  # the grace (1 s) is a bound, not a hang
    batcher.cancel()


async def test_a_cancelled_caller_does_not_fail_the_others() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings())
    futures = [await batcher.submit(new_packet("t"), deadline=1e12) for _ in range(3)]
    waiter = asyncio.ensure_future(futures[1])
    await asyncio.sleep(0.01)
    waiter.cancel()
    send.release.set()
    done = await asyncio.gather(futures[0], futures[2])
    assert len(done) == 2
    await batcher.close()


async def test_flow_control_admits_waiters_first_come_first_served() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_outstanding_packets=2, max_latency=10.0))
    order: list[int] = []

    async def submit(i: int) -> None:
        await batcher.submit(new_packet("t"), deadline=1e12)
        order.append(i)

    tasks = [asyncio.create_task(submit(i)) for i in range(6)]
    await asyncio.sleep(0.05)
    assert order == [0, 1]  # the others wait for room
    send.release.set()
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    await batcher.close()


async def test_close_fails_callers_waiting_for_room_and_sends_what_is_queued() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_outstanding_packets=1))
    queued = await batcher.submit(new_packet("t"), deadline=1e12)
    waiting = asyncio.create_task(batcher.submit(new_packet("t"), deadline=1e12))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    with pytest.raises(packetbus.PacketbusError) as caught:
        await waiting
    assert caught.value.code == grpc.StatusCode.CANCELLED
    send.release.set()
    await closing
    assert (await queued).tracking_id
    with pytest.raises(packetbus.PacketbusError):
        await batcher.submit(new_packet("t"), deadline=1e12)


async def test_cancel_fails_queued_and_in_flight_with_cancelled() -> None:
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_latency=10.0))
    in_flight = await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0.01)
    queued = await batcher.submit(new_packet("t"), deadline=1e12)
    batcher.cancel()
    for future in (in_flight, queued):
        with pytest.raises(packetbus.PacketbusError) as caught:
            await future
        assert caught.value.code == grpc.StatusCode.CANCELLED


async def test_a_caller_cancelled_while_its_room_is_being_granted_leaks_nothing() -> None:
    """The room a batch frees goes to the next waiter still waiting: one whose wait
    was cancelled in the same loop turn (its future cancelled, its task not yet
    resumed) gets none, the waiter behind it does, and the cancelled caller sees
    CancelledError, not an InvalidStateError or ValueError from the batcher."""
    send = FakeSend(hold=True)
    batcher = Batcher(send, settings(max_outstanding_packets=1, max_latency=0.001))
    first = await batcher.submit(new_packet("t"), deadline=1e12)
    await asyncio.sleep(0)  # the first packet's call is in flight
    cancelled = asyncio.create_task(batcher.submit(new_packet("t"), deadline=1e12))
    behind = asyncio.create_task(batcher.submit(new_packet("t"), deadline=1e12))
    await asyncio.sleep(0.01)  # both wait for room
    send.release.set()  # the first call's answer wakes its batch task first...
    cancelled.cancel()  # ...then the waiter is cancelled, in the same turn
    await first
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    async with asyncio.timeout(5):
        result = await (await behind)
    assert result.tracking_id == send.batches[-1][0]
    await batcher.close()
    assert (batcher._outstanding_packets, batcher._outstanding_bytes) == (0, 0)


async def test_an_answer_without_one_result_per_packet_fails_the_callers_at_once() -> None:
    """A reply with fewer results than packets (a broken server, or another one
    behind the address) fails every caller of the batch, retry-safe, instead of
    leaving their futures pending forever (the deadline timer stops with the call)."""

    async def short(
        packets: Sequence[packetbus.Packet], deadline: float
    ) -> list[packet_service_pb2.DispatchResult]:
        return [packet_service_pb2.DispatchResult(tracking_id=packets[0].tracking_id)]

    batcher = Batcher(short, settings(max_latency=10.0))
    futures = [await batcher.submit(new_packet("t"), deadline=time.monotonic() + 30)]
    futures.append(await batcher.submit(new_packet("t"), deadline=time.monotonic() + 30))
    async with asyncio.timeout(5):
        for future in futures:
            with pytest.raises(packetbus.PacketbusError) as raised:
                await future
            assert raised.value.code == grpc.StatusCode.INTERNAL
            assert raised.value.outcome_unknown
    await batcher.close()

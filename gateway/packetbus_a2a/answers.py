"""A task's answers: read from its reply inbox, numbered, and turned into A2A events.

An agent answers A2A task T with packets in reply to T (see `wire`), stored in
order on the topic of `wire.reply_address(T)`'s inbox. The answers are
numbered 0, 1, 2... in that order (packets that are not answers to T are
skipped and not numbered), so every replica that reads the topic sees the same
numbered answers.

Each answer becomes exactly one A2A event (`answer_event`), built only from the
stored packet: the message id and artifact id are the answer packet's
tracking id and the status time is its dispatch time. The same answer gives
the same event bytes on any replica, so a repeated publish is recognised as
the same event (see `event_stream`).

The event's metadata carries ``packetbus.answers``: how many answers the task
includes once the event is applied. The task store records it on the task
(`task_store`), and whoever follows the task next (another turn, another
replica) resumes after that many answers: each answer is applied once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from a2a.helpers import new_text_part
from a2a.types.a2a_pb2 import (
    Artifact,
    Message,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from packetbus import EARLIEST, Client, PacketbusError, SpeechAct
from packetbus._inbox import inbox_topic
from packetbus.v1 import packet_service_pb2

from .parts import PartCodec
from .wire import Answer, read_answer, reply_address

ANSWERS_KEY = "packetbus.answers"

# The states an answer can end a turn with: terminal, or waiting for the user.
TERMINAL_STATES = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_REJECTED,
    }
)
INTERRUPTED_STATES = frozenset(
    {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
)

TaskEvent = TaskStatusUpdateEvent | TaskArtifactUpdateEvent


@dataclass(frozen=True)
class NumberedAnswer:
    """Answer number `index` (from 0) of a task, and the stored packet that carried it."""

    index: int
    answer: Answer
    stored: packet_service_pb2.StoredPacket


def answers_included(task: Task | None) -> int:
    """How many of the agent's answers `task` includes (0 for none or no task)."""
    if task is None or ANSWERS_KEY not in task.metadata.fields:
        return 0
    return int(task.metadata.fields[ANSWERS_KEY].number_value)


async def follow_answers(
    client: Client, task_id: str, *, start: int
) -> AsyncIterator[NumberedAnswer]:
    """Task `task_id`'s answers numbered `start` and on, in order, as they arrive.

    Reads the reply inbox's topic from its first packet (a fan-out read: the
    answers stay for any other reader). Runs until the caller stops; raises
    PacketbusError when the subscription fails for good.
    """
    index = 0
    topic = inbox_topic(reply_address(task_id))
    async with client.subscribe(topic, start=EARLIEST) as stored_packets:
        async for stored in stored_packets:
            if stored.packet.in_reply_to != task_id:
                continue
            answer = read_answer(stored.packet)
            if answer is None:
                continue
            if index >= start:
                yield NumberedAnswer(index, answer, stored)
            index += 1


def answer_state(answer: Answer) -> TaskState:
    """The task state answer `answer` moves the task to."""
    if answer.kind in ("status", "artifact"):
        return TaskState.TASK_STATE_WORKING
    if answer.kind == "input":
        return TaskState.TASK_STATE_INPUT_REQUIRED
    if answer.speech_act == SpeechAct.SPEECH_ACT_FAILURE:
        return TaskState.TASK_STATE_FAILED
    if answer.speech_act == SpeechAct.SPEECH_ACT_REFUSE:
        return TaskState.TASK_STATE_REJECTED
    return TaskState.TASK_STATE_COMPLETED


def _unreadable(answer: Answer) -> Answer:
    # A final answer in place of one whose parts cannot be had: it ends the task.
    return Answer("final", answer.text, answer.name, answer.speech_act)


def ends_turn(answer: Answer) -> bool:
    """Whether `answer` ends the agent's turn (a final answer, or a question for the user)."""
    return answer.kind in ("final", "input")


# Why an answer's parts cannot be had, ever: its document expired or is not what
# the answer names (a transient failure is raised instead, and tried again).
_LOST = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS)


async def answer_event(
    numbered: NumberedAnswer, codec: PartCodec, *, task_id: str, context_id: str
) -> TaskEvent:
    """The A2A event for one numbered answer (deterministic: see the module docstring).

    Parts that travelled as context documents are read back with `codec`; an
    answer whose documents are gone or altered ends the task FAILED, saying so.
    Raises PacketbusError for a transient store failure.
    """
    answer, packet = numbered.answer, numbered.stored.packet
    metadata = Struct()
    metadata.update({ANSWERS_KEY: numbered.index + 1})
    state = answer_state(answer)
    try:
        parts = await codec.unpack(answer.entries)
    except json_format.ParseError as exc:
        answer, state = _unreadable(answer), TaskState.TASK_STATE_FAILED
        parts = [new_text_part(f"the agent's answer {numbered.index} cannot be read: {exc}")]
    except PacketbusError as exc:
        if exc.code not in _LOST:
            raise
        answer, state = _unreadable(answer), TaskState.TASK_STATE_FAILED
        parts = [new_text_part(f"the agent's answer {numbered.index} is lost: {exc.message}")]
    if answer.kind == "artifact":
        return TaskArtifactUpdateEvent(
            task_id=task_id,
            context_id=context_id,
            artifact=Artifact(
                artifact_id=packet.tracking_id,
                name=answer.name,
                parts=parts,
            ),
            metadata=metadata,
        )
    message = Message(
        role=Role.ROLE_AGENT,
        message_id=packet.tracking_id,
        task_id=task_id,
        context_id=context_id,
        parts=parts,
    )
    status = TaskStatus(state=state, message=message)
    status.timestamp.CopyFrom(packet.dispatched_at)
    return TaskStatusUpdateEvent(
        task_id=task_id, context_id=context_id, status=status, metadata=metadata
    )

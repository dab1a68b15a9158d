"""The access table's rows for agents, context, findings, records and tasks: one
builder per RPC (`row`), returning a valid request on fresh resources. `me` is
the agent id of the principal holding the permission; a request that names its
author (origin, author, agent, worker) names it."""

from __future__ import annotations

import uuid

from packetbus.v1 import (
    agent_service_pb2,
    context_service_pb2,
    finding_service_pb2,
    record_service_pb2,
    task_service_pb2,
)
from tests._access_calls import CX, A, Call, F, R, T, row
from tests._access_setup import (
    agent,
    claimed,
    context_doc,
    context_parts,
    finding,
    finding_packet,
    global_key,
    log_entry,
    record,
    summary_packet,
    task_packet,
    unique,
)
from tests._access_world import ADMIN, Door


@row(A + "RegisterAgent")
async def _register_agent(door: Door, me: str) -> Call:
    agent_ = agent_service_pb2.Agent(id=me, role="worker", heartbeat_ttl_seconds=3600)
    return Call(A + "RegisterAgent", agent_service_pb2.RegisterAgentRequest(agent=agent_))


@row(A + "HeartbeatAgent")
async def _heartbeat_agent(door: Door, me: str) -> Call:
    await agent(door, me)
    request = agent_service_pb2.HeartbeatAgentRequest(agent_id=me, state="busy")
    return Call(A + "HeartbeatAgent", request)


@row(A + "DeregisterAgent")
async def _deregister_agent(door: Door, me: str) -> Call:
    await agent(door, me)
    return Call(A + "DeregisterAgent", agent_service_pb2.DeregisterAgentRequest(agent_id=me))


@row(A + "GetAgent")
async def _get_agent(door: Door, me: str) -> Call:
    other = unique("agent")
    await agent(door, other)
    return Call(A + "GetAgent", agent_service_pb2.GetAgentRequest(agent_id=other))


@row(A + "ListAgents")
async def _list_agents(door: Door, me: str) -> Call:
    return Call(A + "ListAgents", agent_service_pb2.ListAgentsRequest())


@row(A + "WatchAgents")
async def _watch_agents(door: Door, me: str) -> Call:
    await agent(door, unique("agent"))
    request = agent_service_pb2.WatchAgentsRequest(
        start_position=agent_service_pb2.MEMBERSHIP_START_EARLIEST
    )
    return Call(A + "WatchAgents", request)


@row(CX + "PutContext")
async def _put_context(door: Door, me: str) -> Call:
    scope = unique("scope")
    return Call(CX + "PutContext", context_parts(scope, "plan", me), resource=scope)


@row(CX + "GetContext")
async def _get_context(door: Door, me: str) -> Call:
    scope, name = await context_doc(door)
    request = context_service_pb2.GetContextRequest(scope=scope, name=name)
    return Call(CX + "GetContext", request)


@row(CX + "DeleteContext")
async def _delete_context(door: Door, me: str) -> Call:
    scope, name = await context_doc(door)
    request = context_service_pb2.DeleteContextRequest(scope=scope, name=name, author=me)
    return Call(CX + "DeleteContext", request)


@row(CX + "ListContexts")
async def _list_contexts(door: Door, me: str) -> Call:
    scope, _ = await context_doc(door)
    return Call(CX + "ListContexts", context_service_pb2.ListContextsRequest(scope=scope))


@row(CX + "WatchContext")
async def _watch_context(door: Door, me: str) -> Call:
    scope, _ = await context_doc(door)
    request = context_service_pb2.WatchContextRequest(scope=scope, after_cursor="0-0")
    return Call(CX + "WatchContext", request)


@row(CX + "SetGlobalContext")
async def _set_global(door: Door, me: str) -> Call:
    request = context_service_pb2.SetGlobalContextRequest(key=unique("key"), value="v")
    return Call(CX + "SetGlobalContext", request)


@row(CX + "GetGlobalContext")
async def _get_global(door: Door, me: str) -> Call:
    key = await global_key(door)
    return Call(CX + "GetGlobalContext", context_service_pb2.GetGlobalContextRequest(key=key))


@row(CX + "DeleteGlobalContext")
async def _delete_global(door: Door, me: str) -> Call:
    key = await global_key(door)
    request = context_service_pb2.DeleteGlobalContextRequest(key=key)
    return Call(CX + "DeleteGlobalContext", request)


@row(CX + "ListGlobalContext")
async def _list_global(door: Door, me: str) -> Call:
    await global_key(door)
    return Call(CX + "ListGlobalContext", context_service_pb2.ListGlobalContextRequest())


@row(CX + "AppendMemory")
async def _append_memory(door: Door, me: str) -> Call:
    request = context_service_pb2.AppendMemoryRequest(agent=me, entry=log_entry())
    return Call(CX + "AppendMemory", request)


@row(CX + "ListMemory")
async def _list_memory(door: Door, me: str) -> Call:
    other = unique("agent")
    await door.stubs.context.AppendMemory(
        context_service_pb2.AppendMemoryRequest(agent=other, entry=log_entry()),
        metadata=door.md(ADMIN),
    )
    return Call(CX + "ListMemory", context_service_pb2.ListMemoryRequest(agent=other))


@row(CX + "AppendTrace")
async def _append_trace(door: Door, me: str) -> Call:
    request = context_service_pb2.AppendTraceRequest(
        task_id=unique("task"), agent=me, entry=log_entry()
    )
    return Call(CX + "AppendTrace", request)


@row(CX + "ListTraces")
async def _list_traces(door: Door, me: str) -> Call:
    task_id, other = unique("task"), unique("agent")
    await door.stubs.context.AppendTrace(
        context_service_pb2.AppendTraceRequest(task_id=task_id, agent=other, entry=log_entry()),
        metadata=door.md(ADMIN),
    )
    request = context_service_pb2.ListTracesRequest(task_id=task_id, agent=other)
    return Call(CX + "ListTraces", request)


@row(F + "PostFinding")
async def _post_finding(door: Door, me: str) -> Call:
    posted = finding_packet(unique("task"), me)
    return Call(F + "PostFinding", finding_service_pb2.PostFindingRequest(packet=posted))


@row(F + "GetFinding")
async def _get_finding(door: Door, me: str) -> Call:
    task_id, finding_id = await finding(door)
    request = finding_service_pb2.GetFindingRequest(task_id=task_id, finding_id=finding_id)
    return Call(F + "GetFinding", request)


@row(F + "ListFindings")
async def _list_findings(door: Door, me: str) -> Call:
    task_id, _ = await finding(door)
    return Call(F + "ListFindings", finding_service_pb2.ListFindingsRequest(task_id=task_id))


@row(F + "DetectConflicts")
async def _conflicts(door: Door, me: str) -> Call:
    task_id, _ = await finding(door)
    request = finding_service_pb2.DetectConflictsRequest(task_id=task_id)
    return Call(F + "DetectConflicts", request)


@row(F + "Escalate")
async def _escalate(door: Door, me: str) -> Call:
    task_id, finding_id = await finding(door)
    request = finding_service_pb2.EscalateRequest(
        task_id=task_id, origin=me, reason="a human must look", finding_ids=[finding_id]
    )
    return Call(F + "Escalate", request)


@row(F + "ListEscalations")
async def _list_escalations(door: Door, me: str) -> Call:
    task_id, _ = await finding(door)
    request = finding_service_pb2.ListEscalationsRequest(task_id=task_id)
    return Call(F + "ListEscalations", request)


@row(R + "PutRecord")
async def _put_record(door: Door, me: str) -> Call:
    request = record_service_pb2.PutRecordRequest(packet=summary_packet(me))
    return Call(R + "PutRecord", request, resource="session_summary")


@row(R + "GetRecord")
async def _get_record(door: Door, me: str) -> Call:
    record_id = await record(door)
    request = record_service_pb2.GetRecordRequest(
        kind=record_service_pb2.RECORD_KIND_SESSION_SUMMARY, record_id=record_id
    )
    return Call(R + "GetRecord", request)


@row(R + "ListRecords")
async def _list_records(door: Door, me: str) -> Call:
    await record(door)
    request = record_service_pb2.ListRecordsRequest(
        kind=record_service_pb2.RECORD_KIND_SESSION_SUMMARY
    )
    return Call(R + "ListRecords", request)


@row(T + "PostTask")
async def _post_task(door: Door, me: str) -> Call:
    request = task_service_pb2.PostTaskRequest(packet=task_packet(unique("queue"), me))
    return Call(T + "PostTask", request)


@row(T + "ClaimTask")
async def _claim(door: Door, me: str) -> Call:
    queue = unique("queue")
    await door.stubs.tasks.PostTask(
        task_service_pb2.PostTaskRequest(packet=task_packet(queue, ADMIN)),
        metadata=door.md(ADMIN),
    )
    request = task_service_pb2.ClaimTaskRequest(
        queue=queue, worker=me, lease_seconds=300, request_id=str(uuid.uuid4())
    )
    return Call(T + "ClaimTask", request)


@row(T + "HeartbeatTask")
async def _heartbeat_task(door: Door, me: str) -> Call:
    queue, task_id, token = await claimed(door, me)
    request = task_service_pb2.HeartbeatTaskRequest(
        queue=queue, task_id=task_id, fencing_token=token
    )
    return Call(T + "HeartbeatTask", request)


@row(T + "ReleaseTask")
async def _release_task(door: Door, me: str) -> Call:
    queue, task_id, token = await claimed(door, me)
    request = task_service_pb2.ReleaseTaskRequest(
        queue=queue, task_id=task_id, fencing_token=token, reason="not mine"
    )
    return Call(T + "ReleaseTask", request)


@row(T + "CompleteTask")
async def _complete_task(door: Door, me: str) -> Call:
    queue, task_id, token = await claimed(door, me)
    request = task_service_pb2.CompleteTaskRequest(
        queue=queue, task_id=task_id, fencing_token=token, summary="done"
    )
    return Call(T + "CompleteTask", request)


@row(T + "FailTask")
async def _fail_task(door: Door, me: str) -> Call:
    queue, task_id, token = await claimed(door, me)
    request = task_service_pb2.FailTaskRequest(
        queue=queue, task_id=task_id, fencing_token=token, error="broke"
    )
    return Call(T + "FailTask", request)


@row(T + "GetTask")
async def _get_task(door: Door, me: str) -> Call:
    queue, task_id, _ = await claimed(door, ADMIN)
    return Call(T + "GetTask", task_service_pb2.GetTaskRequest(queue=queue, task_id=task_id))


@row(T + "ListTasks")
async def _list_tasks(door: Door, me: str) -> Call:
    queue, _, _ = await claimed(door, ADMIN)
    return Call(T + "ListTasks", task_service_pb2.ListTasksRequest(queue=queue))


@row(T + "ListTaskResults")
async def _list_results(door: Door, me: str) -> Call:
    queue, task_id, token = await claimed(door, ADMIN)
    await door.stubs.tasks.FailTask(
        task_service_pb2.FailTaskRequest(
            queue=queue, task_id=task_id, fencing_token=token, error="broke"
        ),
        metadata=door.md(ADMIN),
    )
    request = task_service_pb2.ListTaskResultsRequest(queue=queue, task_id=task_id)
    return Call(T + "ListTaskResults", request)


@row(T + "ListTaskQueues")
async def _list_task_queues(door: Door, me: str) -> Call:
    queue, _, _ = await claimed(door, ADMIN)
    request = task_service_pb2.ListTaskQueuesRequest(prefix=queue)
    return Call(T + "ListTaskQueues", request, resource=queue, filtered=True)


@row(T + "WatchTasks")
async def _watch_tasks(door: Door, me: str) -> Call:
    queue, _, _ = await claimed(door, ADMIN)
    request = task_service_pb2.WatchTasksRequest(queue=queue, after_cursor="0-0")
    return Call(T + "WatchTasks", request)

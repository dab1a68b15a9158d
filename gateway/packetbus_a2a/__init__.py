"""packetbus_a2a: an A2A (Agent2Agent) gateway to packetbus agents (``packetbus[a2a]``).

Run it with ``packetbus a2a serve --target HOST:PORT --listen 127.0.0.1:8080``. The
gateway is a packetbus *client* (it never talks to Redis), built on a2a-sdk 1.3's
server components: its `DefaultRequestHandler`, JSON-RPC and HTTP+JSON routes, and
the `AgentExecutor` / `VersionedTaskStore` interfaces. Any number of replicas may
run against one packetbus server.

What maps to what:

- Agent cards: one per registered agent (AgentService.GetAgent): id -> name, role
  -> description, each capability -> a skill, interfaces at ``/agents/<id>/``
  (JSON-RPC) and ``/agents/<id>/rest`` (HTTP+JSON); served at
  ``/agents/<id>/.well-known/agent-card.json`` and, for ``--default-agent``, at
  ``/.well-known/agent-card.json``; ETag + ``Cache-Control: public, max-age=60``
  (`cards`).
- SendMessage (blocking and streaming, both transports): a REQUEST packet to the
  agent's inbox; A2A context id -> conversation_id, A2A task id -> reply_with,
  origin ``a2a.task.<task id>``, whose inbox receives the agent's answers. Answers
  (packets in reply, see `wire`) -> WORKING status updates, artifacts and the final
  COMPLETED / FAILED / REJECTED status with its message (`executor`).
- CancelTask: a CANCEL packet to the agent's inbox; the task is CANCELED at once.
- Tasks: ContextService documents (scope ``a2a-tasks``, name ``<agent id>/<task
  id>``), written with compare-and-set on the document version, so GetTask and
  ListTasks answer on every replica (`task_store`).
- A packetbus agent serves A2A without knowing it through `A2AAgent` (`agent`).
- Push notifications: refused (a2a-sdk's push-notification-not-supported error);
  the capability is absent from every card (unset, not false).
- Credentials (`auth`): an A2A call's ``Authorization: Bearer <JWT>`` is sent with
  every packetbus call made for it (`Client.with_token`: one connection, the token
  per call; only over TLS or loopback), so the packetbus server authenticates the
  caller and applies its permissions; its refusals are HTTP 401 / 403, and a
  refused message stores no task. ``--require-auth``: calls without a token get
  401 and cards declare an HTTP bearer scheme; without it they use the gateway's
  own connection settings.
- Ownership: a task made with a token belongs to its ``sub`` (its document name
  holds the owner's key); other callers get task-not-found for it.
- ListTasks pages (`task_pages`): page_size (default 50, max 100), opaque page
  tokens any replica continues, total_size, filters by context id, state and
  status_timestamp_after, newest change first, memory bounded per call.

Not done yet (later slices of issue 18):

- the gRPC transport; routing by the A2A ``tenant`` (agents are chosen by path);
- cross-replica streams: a stream is served by the replica that runs the task, and
  SubscribeToTask works only there (the task's answers are a packetbus topic, but no
  a2a-sdk `TaskEventStream` is wired to it yet); a replica killed mid-task ends
  that task's stream;
- a follow-up message to the same task (input-required): answers are read from the
  task's reply inbox from its start, so an earlier final answer would be replayed;
  the helper has no input-required answer yet;
- parts other than text (data, files, parts over the packet limit as context
  documents);
- credentials on the gRPC transport (there is none yet); ListTasks reads every task
  of the caller when it filters (one read per task, 16 at a time) and lists every
  name otherwise: time grows with a caller's tasks, memory does not;
- an agent is not told when its task timed out at the gateway (`answer_timeout`).
"""

from __future__ import annotations

from .agent import A2AAgent, A2ARequest
from .app import Gateway
from .serve import serve

__all__ = ["A2AAgent", "A2ARequest", "Gateway", "serve"]

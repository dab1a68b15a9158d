"""packetbus_a2a: an A2A (Agent2Agent) gateway to packetbus agents (``packetbus[a2a]``).

Run it with ``packetbus a2a serve --target HOST:PORT --listen 127.0.0.1:8080``
(add ``--grpc-listen 127.0.0.1:50052`` for gRPC). The gateway is a packetbus
*client* (it never talks to Redis), built on a2a-sdk 1.3's server components: its
`DefaultRequestHandler`, JSON-RPC and HTTP+JSON routes, gRPC servicer
(`GrpcHandler`) and the `AgentExecutor` / `VersionedTaskStore` interfaces. Any
number of replicas may run against one packetbus server.

What maps to what:

- Agent cards: one per registered agent (AgentService.GetAgent): id -> name, role
  -> description, each capability -> a skill, interfaces at ``/agents/<id>/``
  (JSON-RPC), ``/agents/<id>/rest`` (HTTP+JSON) and, with gRPC on, ``host:port``
  (gRPC, tenant = the agent id; ``--grpc-public-address``); served at
  ``/agents/<id>/.well-known/agent-card.json`` and, for ``--default-agent``, at
  ``/.well-known/agent-card.json``; ETag + ``Cache-Control: public, max-age=60``
  (`cards`).
- Transports: JSON-RPC and HTTP+JSON on the HTTP listener (`app`), gRPC
  (``lf.a2a.v1.A2AService`` and gRPC health) on its own (`grpc_server`), one
  process; all go through one `AgentRouter` to one LRU of per-agent
  `DefaultRequestHandler`s (`routing`, `handlers`).
- Routing: HTTP by path (``/agents/<id>/``); an A2A ``tenant`` (JSON-RPC params,
  the HTTP+JSON binding's ``/rest/<tenant>/...`` paths) naming another agent is
  InvalidParams (-32602 / HTTP 400). gRPC by the request's ``tenant``, the
  default agent when empty; no such agent: ``NOT_FOUND``.
- SendMessage (blocking and streaming, every transport): a REQUEST packet to the
  agent's inbox; A2A context id -> conversation_id, A2A task id -> reply_with,
  origin ``a2a.task.<task id>``, whose inbox receives the agent's answers. Answers
  (packets in reply, see `wire`), numbered in order, each become one A2A event:
  WORKING status updates, artifacts, INPUT_REQUIRED (the agent asks; the
  client's next message to the task is another request, and only answers after
  the ones the task holds are applied) and the final COMPLETED / FAILED /
  REJECTED status (`answers`, `executor`).
- Task events cross replicas (`event_stream`): each applied event is published,
  with the task version it made, on the task's own topic; SubscribeToTask on any
  replica sends the stored task, then every later event once, in order.
- A replica that dies mid-task: one replica at a time follows a task's answers,
  holding its lease in the shared context (`lease`, 5 s, renewed); the replica
  serving a SubscribeToTask or GetTask for a task nobody follows takes the lease
  and goes on from the answers the task holds (``packetbus.answers`` in its
  metadata), so no answer is lost or applied twice (`driver`).
- CancelTask on any replica: the task is CANCELED at once and a CANCEL packet
  goes to the agent's inbox (stored once, whichever replica sends it).
- Tasks: ContextService documents (scope ``a2a-tasks``, name ``<agent id>/<task
  id>``), written with compare-and-set on the document version, so GetTask and
  ListTasks answer on every replica (`task_store`).
- Parts of every kind (text, raw bytes, url, data, with media type, filename and
  metadata) in both directions, unchanged: the request's parts reach the agent as
  ``request.parts`` (a2a `Part`), and the agent's answers carry any parts. A part
  that would pass the server's packet limit (GetServerInfo, read once) travels as
  a ContextService document (scope ``a2a-parts``, name ``<task id>/<uuid>/<part
  index>``, content type its media type) referenced from the packet and read back
  on the other side; nothing is cut. One the context store refuses (over
  ``max_context_bytes``) is INVALID_PARAMS to the A2A caller, with no task and no
  packet stored (`parts`, `wire`).
- A packetbus agent serves A2A without knowing it through `A2AAgent` (`agent`).
- Push notifications: refused (a2a-sdk's push-notification-not-supported error);
  the capability is absent from every card (unset, not false).
- Credentials (`auth`): an A2A call's ``Authorization: Bearer <JWT>`` (HTTP
  header, or gRPC ``authorization`` metadata) is sent with every packetbus call
  made for it (`Client.with_token`: one connection, the token per call; only over
  TLS or loopback), so the packetbus server authenticates the caller and applies
  its permissions; its refusals are HTTP 401 / 403 or gRPC UNAUTHENTICATED /
  PERMISSION_DENIED with its message, and a refused message stores no task. A
  malformed credential, or a token the gateway may not forward, is 401 /
  UNAUTHENTICATED before anything is called. ``--require-auth``: calls without a
  token get 401 / UNAUTHENTICATED and cards declare an HTTP bearer scheme;
  without it they use the gateway's own connection settings.
- Ownership: a task made with a token belongs to its ``sub`` (its document name
  holds the owner's key); other callers get task-not-found for it.
- ListTasks pages (`task_pages`): page_size (default 50, max 100), opaque page
  tokens any replica continues, total_size, filters by context id, state and
  status_timestamp_after, newest change first, memory bounded per call.

Not done yet:

- TLS on the gateway's own listeners (HTTP and gRPC are plaintext: loopback by
  default, or behind a TLS proxy); the HTTP side routes by path only;
- a task whose replica died is driven again only when a GetTask or
  SubscribeToTask asks for it (no background sweep); ListTasks shows it as it was;
- the task store keeps each task as one JSON document with its parts inline (a
  task whose JSON passes ``max_context_bytes`` cannot be stored);
- ListTasks reads every task of the caller when it filters (one read per task,
  16 at a time) and lists every name otherwise: time grows with a caller's
  tasks, memory does not;
- an agent is not told when its task timed out at the gateway (`answer_timeout`).
"""

from __future__ import annotations

from .agent import A2AAgent, A2ARequest
from .app import Gateway
from .serve import serve

__all__ = ["A2AAgent", "A2ARequest", "Gateway", "serve"]

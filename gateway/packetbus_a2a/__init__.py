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
  (packets in reply, see `wire`) -> WORKING status updates, artifacts and the final
  COMPLETED / FAILED / REJECTED status with its message (`executor`).
- CancelTask: a CANCEL packet to the agent's inbox; the task is CANCELED at once.
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

Not done yet (later slices of issue 18):

- TLS on the gateway's own listeners (HTTP and gRPC are plaintext: loopback by
  default, or behind a TLS proxy); the HTTP side has no tenant routing at its
  root (``/`` JSON-RPC without a path), only by path;
- cross-replica streams: a stream is served by the replica that runs the task, and
  SubscribeToTask works only there (the task's answers are a packetbus topic, but no
  a2a-sdk `TaskEventStream` is wired to it yet); a replica killed mid-task ends
  that task's stream;
- a follow-up message to the same task (input-required): answers are read from the
  task's reply inbox from its start, so an earlier final answer would be replayed;
  the helper has no input-required answer yet;
- ListTasks pages (it reads at most 100 tasks, no page token);
- A2A credentials -> packetbus principals (the gateway calls packetbus with its
  own connection settings: the CLI's --tls-*/token flags);
- the task store keeps each task as one JSON document, its parts inline (a large
  part is stored there again, base64, beside its ``a2a-parts`` document): a task
  whose JSON passes ``max_context_bytes`` cannot be stored; an answer whose
  document expired (24 h) or cannot be read ends the task's execution with an
  error instead of a FAILED status;
- an agent is not told when its task timed out at the gateway (`answer_timeout`).
"""

from __future__ import annotations

from .agent import A2AAgent, A2ARequest
from .app import Gateway
from .serve import serve

__all__ = ["A2AAgent", "A2ARequest", "Gateway", "serve"]

// The Task queues page's logic: queue counts by status and priority, a task's claims
// from its custody history, and task events as lines a person reads.

export const STATUSES = ["queued", "claimed", "completed", "carceled"] as const;
export type Status = (typeof STATUSES)[number];

/** The API's enum name of `status` ("TASK_STATUS_QUEUED"). */
export const statusName = (status: Status): string => `TASK_STATUS_${status.toUpperCase()}`;

/** A TaskStatus enum name as a word ("TASK_STATUS_QUEUED" -> "queued"); "" for none. */
export function statusWord(name: string | undefined): string {
  if (!name || name === "TASK_STATUS_UNSPECIFIED") return "";
  return name.replace(/^TASK_STATUS_/, "").toLowerCase();
}

export interface TaskCount {
  status: string;
  priority: number;
  tasks: number;
}

export interface QueueSummary {
  queue: string;
  tasks: number;
  counts: TaskCount[];
  unclassified: number;
  byStatus: Record<string, number>;
}

export interface TaskState {
  queue: string;
  taskId: string;
  status: string;
  priority: number;
  requiredCapability: string;
  claims: number;
  failures: number;
  maxAttempts: number;
  worker: string;
  fencingToken: string; // uint64 in protobuf JSON: a string
  leaseExpiresAt?: string | null;
  postedAt?: string | null;
  updatedAt?: string | null;
  packet?: { packet?: { trackingId?: string } } | null;
}

export interface TaskResult {
  worker: string;
  fencingToken: string;
  completed: boolean;
  result?: Record<string, unknown> | null;
  summary: string;
  error: string;
  at?: string | null;
}

export interface Hop {
  sequence: number;
  action: string;
  actor: string;
  counterpart: string;
  reason: string;
  principal: string;
  occurredAt: string;
}

export interface TaskView {
  task: TaskState;
  results: TaskResult[];
  history: Hop[];
}

export interface TaskEvent {
  taskId: string;
  oldStatus: string;
  newStatus: string;
  actor: string;
  fencingToken: string;
  at?: string | null;
  reason: string;
  cursor: string;
}

export interface PriorityRow {
  priority: number;
  byStatus: Record<Status, number>;
  total: number;
}

/** A queue's counts as one row per priority (highest first), a column per status. */
export function priorityRows(summary: QueueSummary): PriorityRow[] {
  const rows = new Map<number, PriorityRow>();
  for (const count of summary.counts) {
    const status = statusWord(count.status) as Status;
    if (!STATUSES.includes(status)) continue;
    const row = rows.get(count.priority) ?? {
      priority: count.priority,
      byStatus: { queued: 0, claimed: 0, completed: 0, carceled: 0 },
      total: 0,
    };
    row.byStatus[status] += count.tasks;
    row.total += count.tasks;
    rows.set(count.priority, row);
  }
  return [...rows.values()].sort((a, b) => b.priority - a.priority);
}

/** "kind:name" pairs of a custody record's counterpart ("queue:q worker:w1"). */
export function counterpartOf(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of text.split(" ")) {
    const at = pair.indexOf(":");
    if (at > 0) out[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return out;
}

export interface Claim {
  number: number;
  worker: string;
  at: string;
  // How the claim ended: the next settling hop's action (completed, failed,
  // released, carceled), or "" while it holds (or when the history does not say).
  outcome: string;
  reason: string;
}

const SETTLING = new Set(["completed", "failed", "released", "carceled", "expired"]);

/** The task's claims in order, from its custody history (the "claimed" hops). */
export function claimsOf(history: Hop[]): Claim[] {
  const claims: Claim[] = [];
  for (const hop of [...history].sort((a, b) => a.sequence - b.sequence)) {
    if (hop.action === "claimed") {
      claims.push({
        number: claims.length + 1,
        worker: counterpartOf(hop.counterpart).worker ?? hop.actor,
        at: hop.occurredAt,
        outcome: "",
        reason: "",
      });
    } else if (SETTLING.has(hop.action) && claims.length > 0) {
      const last = claims[claims.length - 1];
      if (last.outcome === "") {
        last.outcome = hop.action;
        last.reason = hop.reason;
      }
    }
  }
  return claims;
}

/** One line for a task event: "t-1: queued → claimed (w1)". */
export function eventLine(event: TaskEvent): string {
  const from = statusWord(event.oldStatus);
  const to = statusWord(event.newStatus);
  const change = from ? `${from} → ${to}` : `posted, ${to}`;
  const who = event.actor ? ` by ${event.actor}` : "";
  // A post's reason only repeats it ("posted").
  const why = event.reason && from ? `: ${event.reason}` : "";
  return `${event.taskId}: ${change}${who}${why}`;
}

/** The query string of a task list request. */
export function tasksQuery(status: Status | "", pageToken: string): string {
  const query = new URLSearchParams();
  if (status) query.set("status", status);
  if (pageToken) query.set("pageToken", pageToken);
  const text = query.toString();
  return text ? `?${text}` : "";
}

/** The API path of a queue (its name may hold "/": each part escaped, the slashes kept). */
export function queuePath(queue: string): string {
  return `/api/queues/${queue.split("/").map(encodeURIComponent).join("/")}`;
}

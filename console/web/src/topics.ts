// Topics and consumer groups: the shapes of /api/topics..., and the pure logic the Topics
// page uses (paths, labels, the browse history of cursors). Tested in test/topics.test.ts.

export interface TopicRetention {
  maxAgeSeconds?: number;
  maxPackets?: string;
  maxBytes?: string;
  policy?: string;
}

/** One topic of GET /api/topics (64-bit counts are strings in protobuf's JSON). */
export interface TopicSummary {
  name: string;
  packets: string;
  firstCursor: string;
  lastCursor: string;
  retention?: TopicRetention | null;
  consumerGroups: number;
  carcelEntries: string;
}

export interface ConsumerGroup {
  name: string;
  ackDeadlineSeconds: number;
  maxDeliveryAttempts: number;
  createdAt?: string | null;
  outstanding: string;
  consumers: string;
  lastDeliveredCursor: string;
  /** Absent when the store cannot tell. */
  lag?: string;
}

/** GET /api/topics/{topic}. */
export interface TopicDetail {
  topic: string;
  retention?: TopicRetention | null;
  packets: string;
  storedBytes: string;
  groups: ConsumerGroup[] | null;
  groupsRefused: string;
}

export interface PacketRow {
  cursor: string;
  trackingId: string;
  origin: string;
  speechAct: string;
  contents: string;
  contentBytes: number;
  dispatchedAt: string;
  storedAt: string;
  conversationId: string;
}

export interface Gap {
  resumeAfterCursor?: string;
  missedPackets?: string;
  reason?: string;
}

/** GET /api/topics/{topic}/packets. */
export interface PacketPage {
  packets: PacketRow[];
  nextCursor: string;
  gaps: Gap[];
}

export const BROWSE_SIZES = [20, 50, 100, 200] as const;

/**
 * The API path of `topic`: one segment, its "/" escaped as %2F, so a topic named
 * "a/events" or "a/packets" is that topic, not topic "a"'s stream or packets.
 */
export function topicPath(topic: string): string {
  return "/api/topics/" + encodeURIComponent(topic);
}

/** The path of a page of `topic`'s packets after `after` ("" from the oldest). */
export function browsePath(topic: string, after: string, limit: number): string {
  const query = new URLSearchParams();
  if (after) query.set("after", after);
  query.set("limit", String(limit));
  return `${topicPath(topic)}/packets?${query}`;
}

/** The Custody page of a packet. */
export function custodyHref(trackingId: string): string {
  return `/custody?id=${encodeURIComponent(trackingId)}`;
}

/** A byte count for a person: "512 B", "1.5 KiB", "2.0 MiB"... */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A topic's own retention in words: its limits and policy, or that it has none. */
export function retentionText(retention: TopicRetention | null | undefined): string {
  const parts: string[] = [];
  const r = retention ?? {};
  if (r.maxAgeSeconds) parts.push(`max age ${r.maxAgeSeconds} s`);
  if (r.maxPackets && r.maxPackets !== "0") parts.push(`max ${r.maxPackets} packets`);
  if (r.maxBytes && r.maxBytes !== "0") parts.push(`max ${formatBytes(Number(r.maxBytes))}`);
  if (r.policy === "RETENTION_POLICY_WORK_QUEUE") parts.push("work queue");
  return parts.length ? parts.join(", ") : "server default";
}

/** An enum name as a label: "SPEECH_ACT_INFORM_IF" -> "inform-if". */
export function enumLabel(name: string, prefix: string): string {
  return name.startsWith(prefix) ? name.slice(prefix.length).toLowerCase().replace(/_/g, "-") : name;
}

/** A group's lag as shown: the count, or "unknown" when the store cannot tell. */
export function lagText(group: ConsumerGroup): string {
  return group.lag === undefined ? "unknown" : group.lag;
}

/**
 * Where each page of packets shown so far started (`after` cursors, "" = the oldest),
 * the current page last: Next pushes the page's nextCursor, Previous pops.
 */
export type BrowseHistory = readonly string[];

export const START: BrowseHistory = [""];

export function current(history: BrowseHistory): string {
  return history[history.length - 1] ?? "";
}

/** The history after moving to the page after `nextCursor` (unchanged when it is no move). */
export function next(history: BrowseHistory, nextCursor: string): BrowseHistory {
  return nextCursor && nextCursor !== current(history) ? [...history, nextCursor] : history;
}

export function previous(history: BrowseHistory): BrowseHistory {
  return history.length > 1 ? history.slice(0, -1) : history;
}

/** A history that starts at `cursor` (the cursor a person typed; "" = the oldest). */
export function startAt(cursor: string): BrowseHistory {
  return [cursor.trim()];
}

const CURSOR = /^[0-9]{1,20}-[0-9]{1,20}$/;

/** Whether `text` is a cursor the API takes ("" too: from the oldest). */
export function isCursor(text: string): boolean {
  return text.trim() === "" || CURSOR.test(text.trim());
}

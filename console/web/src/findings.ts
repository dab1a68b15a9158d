// The Findings page's logic: findings, the conflicts between them, escalations.

export interface Finding {
  findingId: string;
  taskId: string;
  claim: string;
  confidence: number;
  subject: string;
  refutes: boolean;
  citations: string[];
  workerId: string;
  labels: Record<string, string>;
  origin: string;
  trackingId: string;
  dispatchedAt: string;
}

export interface Conflict {
  taskId: string;
  subject: string;
  firstFindingId: string;
  secondFindingId: string;
  reason: string;
  first: Finding | null;
  second: Finding | null;
}

export interface TaskFindings {
  taskId: string;
  findings: Finding[];
  conflicts: Conflict[];
}

export interface Escalation {
  trackingId: string;
  origin: string;
  taskId: string;
  reason: string;
  dispatchedAt: string;
  findings: Finding[];
}

/** A confidence as a person reads it: two decimals ("0.90"). */
export const confidenceText = (value: number): string => value.toFixed(2);

/** A finding's stance: what it says of its claim. */
export const stance = (finding: Finding): string => (finding.refutes ? "refutes" : "supports");

/** How many conflicts each finding is in, by finding id. */
export function conflictCounts(conflicts: Conflict[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const c of conflicts) {
    for (const id of [c.firstFindingId, c.secondFindingId]) counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

/** The query string of a findings request: taskId, and threshold when given ("" = the server's). */
export function findingsParams(taskId: string, threshold: string): Record<string, string> {
  return { taskId, threshold: threshold.trim() };
}

/** Whether `text` is a threshold the API takes: empty (the default) or a number 0-1. */
export function validThreshold(text: string): boolean {
  const trimmed = text.trim();
  if (!trimmed) return true;
  const value = Number(trimmed);
  return !Number.isNaN(value) && value >= 0 && value <= 1;
}

/** Escalations newest first. */
export function newestFirst(escalations: Escalation[]): Escalation[] {
  return [...escalations].sort((a, b) => (a.dispatchedAt < b.dispatchedAt ? 1 : a.dispatchedAt > b.dispatchedAt ? -1 : 0));
}

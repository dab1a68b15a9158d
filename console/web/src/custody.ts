// The Custody page's rows: GET /api/custody/{id}'s hops with a person's reading of
// each verdict.

export interface Hop {
  index: number;
  action: string;
  actor: string;
  keyId: string;
  principal: string;
  occurredAt: string;
  verdict: string; // CUSTODY_VERDICT_OK, _BAD_SIGNATURE, ...
  detail: string;
}

export interface CustodyReport {
  verified: boolean;
  headVerdict: string;
  hops: Hop[];
}

export interface HopRow {
  index: number;
  hop: string;
  actor: string;
  keyId: string;
  time: string;
  verdict: string; // "ok", "bad signature", ...
  ok: boolean;
  detail: string;
}

const PREFIX = "CUSTODY_VERDICT_";

/** "CUSTODY_VERDICT_BAD_SIGNATURE" -> "bad signature" ("unspecified" for ""). */
export function verdictText(verdict: string): string {
  const bare = verdict.startsWith(PREFIX) ? verdict.slice(PREFIX.length) : verdict;
  return (bare || "UNSPECIFIED").toLowerCase().replace(/_/g, " ");
}

/** One row per hop, in chain order. */
export function hopRows(report: CustodyReport): HopRow[] {
  return [...report.hops]
    .sort((a, b) => a.index - b.index)
    .map((hop) => ({
      index: hop.index,
      hop: hop.action || "—",
      actor: hop.actor || "—",
      keyId: hop.keyId || "—",
      time: hop.occurredAt || "unknown",
      verdict: verdictText(hop.verdict),
      ok: hop.verdict === `${PREFIX}OK`,
      detail: hop.detail,
    }));
}

/** The chain's overall reading: verified only when every hop and the head are OK. */
export function overall(report: CustodyReport): { ok: boolean; text: string } {
  if (report.verified) return { ok: true, text: `verified: ${report.hops.length} hops, head ok` };
  const bad = report.hops.filter((hop) => hop.verdict !== `${PREFIX}OK`).length;
  return {
    ok: false,
    text: `not verified: ${bad} of ${report.hops.length} hops failed, head ${verdictText(report.headVerdict)}`,
  };
}

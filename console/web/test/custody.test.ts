import { describe, expect, it } from "vitest";

import { type Hop, hopRows, overall, verdictText } from "../src/custody";

const hop = (index: number, action: string, verdict: string, extra: Partial<Hop> = {}): Hop => ({
  index,
  action,
  actor: "server",
  keyId: "k1",
  principal: "",
  occurredAt: "2026-01-01T00:00:0" + index + "Z",
  verdict,
  detail: "",
  ...extra,
});

describe("custody hops -> rows", () => {
  it("every hop ok: verified", () => {
    const report = {
      verified: true,
      headVerdict: "CUSTODY_VERDICT_OK",
      hops: [hop(1, "validated", "CUSTODY_VERDICT_OK"), hop(0, "received", "CUSTODY_VERDICT_OK")],
    };
    expect(hopRows(report)).toEqual([
      { index: 0, hop: "received", actor: "server", keyId: "k1", time: "2026-01-01T00:00:00Z", verdict: "ok", ok: true, detail: "" },
      { index: 1, hop: "validated", actor: "server", keyId: "k1", time: "2026-01-01T00:00:01Z", verdict: "ok", ok: true, detail: "" },
    ]);
    expect(overall(report)).toEqual({ ok: true, text: "verified: 2 hops, head ok" });
  });

  it("a bad hop is named, with its detail", () => {
    const report = {
      verified: false,
      headVerdict: "CUSTODY_VERDICT_BROKEN_LINK",
      hops: [
        hop(0, "received", "CUSTODY_VERDICT_OK"),
        hop(1, "", "CUSTODY_VERDICT_BAD_SIGNATURE", { detail: "signature does not verify", keyId: "", occurredAt: "" }),
      ],
    };
    const [, bad] = hopRows(report);
    expect(bad).toEqual({
      index: 1,
      hop: "—",
      actor: "server",
      keyId: "—",
      time: "unknown",
      verdict: "bad signature",
      ok: false,
      detail: "signature does not verify",
    });
    expect(overall(report)).toEqual({ ok: false, text: "not verified: 1 of 2 hops failed, head broken link" });
  });

  it("verdict names read as words", () => {
    expect(verdictText("CUSTODY_VERDICT_CONTENT_DIGEST_MISMATCH")).toBe("content digest mismatch");
    expect(verdictText("")).toBe("unspecified");
  });
});

import { describe, expect, it } from "vitest";

import { ApiError, errorFromResponse, errorMessage } from "../src/api";

describe("API error -> message", () => {
  it("the API's JSON error with its code", () => {
    const error = errorFromResponse(403, '{"error": "principal bob may not packets.approve on topic pay", "code": "PERMISSION_DENIED"}');
    expect(error).toBeInstanceOf(ApiError);
    expect([error.status, error.code, error.message]).toEqual([
      403,
      "PERMISSION_DENIED",
      "principal bob may not packets.approve on topic pay",
    ]);
    expect(errorMessage(error)).toBe(
      "Not permitted: principal bob may not packets.approve on topic pay (PERMISSION_DENIED)",
    );
  });

  it("a body that is not the API's JSON gives the status's hint", () => {
    expect(errorMessage(errorFromResponse(503, "<html>bad gateway</html>"))).toBe("packetbus is unavailable");
    expect(errorMessage(errorFromResponse(418, ""))).toBe("HTTP 418");
    expect(errorMessage(errorFromResponse(400, '{"error": "liveness must be one of [...]", "code": "INVALID_ARGUMENT"}'))).toBe(
      "liveness must be one of [...] (INVALID_ARGUMENT)",
    );
  });

  it("no answer at all, and other errors", () => {
    expect(errorMessage(new ApiError(0, "", "Failed to fetch"))).toBe("The console did not answer: Failed to fetch");
    expect(errorMessage(new Error("boom"))).toBe("boom");
    expect(errorMessage("plain")).toBe("plain");
  });
});

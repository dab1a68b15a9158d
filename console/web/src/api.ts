// The console's JSON API (console/README.md): fetch with the CSRF header on changes,
// errors turned into one readable message.

/** A refused or failed API call: `status` 0 when the console did not answer. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

const STATUS_HINTS: Record<number, string> = {
  401: "Sign in again",
  403: "Not permitted",
  404: "Not found",
  409: "Not possible now",
  413: "Request too large",
  429: "Too many requests, try again shortly",
  503: "packetbus is unavailable",
};

/**
 * The ApiError for an HTTP answer `status` whose body text is `body`: the API's
 * `{"error", "code"}` when the body is one, else the status's hint.
 */
export function errorFromResponse(status: number, body: string): ApiError {
  try {
    const doc: unknown = JSON.parse(body);
    if (doc && typeof doc === "object" && typeof (doc as { error?: unknown }).error === "string") {
      const { error, code } = doc as { error: string; code?: unknown };
      return new ApiError(status, typeof code === "string" ? code : "", error);
    }
  } catch {
    // Not JSON (a proxy's page, say): fall through to the status's hint.
  }
  return new ApiError(status, "", STATUS_HINTS[status] ?? `HTTP ${status}`);
}

/** One line for a person: what failed and, when known, the gRPC code. */
export function errorMessage(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 0) return `The console did not answer: ${error.message}`;
    const hint = STATUS_HINTS[error.status];
    const code = error.code ? ` (${error.code})` : "";
    return hint && hint !== error.message
      ? `${hint}: ${error.message}${code}`
      : `${error.message}${code}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** `fetch` of the API: the JSON answer, or ApiError. */
export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET") headers["X-Packetbus-Console"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (exc) {
    throw new ApiError(0, "", exc instanceof Error ? exc.message : String(exc));
  }
  const text = await response.text();
  if (!response.ok) throw errorFromResponse(response.status, text);
  return JSON.parse(text) as T;
}

/** A path segment, escaped. */
export const seg = (value: string): string => encodeURIComponent(value);

/**
 * What every resilient call of this client shares: which failures are a lost connection
 * (retried, or the stream reopened), and a pause that an abort cuts short.
 */
import { Code } from "@connectrpc/connect";

/**
 * A failure `code` that is a lost connection, when neither the caller (its signal) nor the
 * client (`close()`) caused it: UNAVAILABLE, or CANCELED, which connect-node gives the streams
 * and calls of an HTTP/2 session that went away ("connection aborted").
 */
export function lostConnection(code: Code): boolean {
  return code === Code.Unavailable || code === Code.Canceled;
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

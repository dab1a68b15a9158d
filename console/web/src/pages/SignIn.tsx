// Sign in: a bearer token (JWT) becomes a cookie session (POST /api/session).
import { useState } from "preact/hooks";

import { call, errorMessage } from "../api";

export function SignInPage({ onSignedIn }: { onSignedIn: () => Promise<void> }) {
  const [token, setToken] = useState("");
  const [problem, setProblem] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setProblem("");
    try {
      await call("POST", "/api/session", { token: token.trim() });
      setToken("");
      await onSignedIn();
    } catch (exc) {
      setProblem(errorMessage(exc));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in</h1>
      <p>Paste the bearer token (JWT) packetbus gave you. The console keeps it on the server, not in this page.</p>
      <form onSubmit={(event) => void submit(event)}>
        <label for="token">Token</label>
        <textarea
          id="token"
          name="token"
          rows={4}
          required
          autoComplete="off"
          spellcheck={false}
          value={token}
          onInput={(event) => setToken((event.target as HTMLTextAreaElement).value)}
        />
        <button type="submit" disabled={busy || !token.trim()}>
          Sign in
        </button>
      </form>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
    </section>
  );
}

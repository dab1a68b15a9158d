// The console's shell: who is signed in, the navigation, and the page for the path.
import { render } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";

import { ApiError, call, errorMessage } from "./api";
import type { Caller } from "./grants";
import { AgentsPage } from "./pages/Agents";
import { CarcelPage } from "./pages/Carcel";
import { CustodyPage } from "./pages/Custody";
import { FindingsPage } from "./pages/Findings";
import { GovernancePage } from "./pages/Governance";
import { OverviewPage } from "./pages/Overview";
import { SignInPage } from "./pages/SignIn";
import { TopicsPage } from "./pages/Topics";
import { TaskQueuesPage } from "./pages/TaskQueues";
import "./style.css";

const PAGES = [
  { path: "/overview", title: "Overview" },
  { path: "/agents", title: "Agents" },
  { path: "/topics", title: "Topics" },
  { path: "/queues", title: "Task queues" },
  { path: "/findings", title: "Findings" },
  { path: "/governance", title: "Governance" },
  { path: "/carcel", title: "Carcel" },
  { path: "/custody", title: "Custody" },
] as const;

function currentPath(): string {
  const path = window.location.pathname;
  return path === "/" ? "/agents" : path;
}

function App() {
  const [path, setPath] = useState(currentPath());
  const [caller, setCaller] = useState<Caller | null>(null);
  const [needsSignIn, setNeedsSignIn] = useState(false);
  const [problem, setProblem] = useState("");

  const refreshMe = useCallback(async () => {
    try {
      setCaller(await call<Caller>("GET", "/api/me"));
      setNeedsSignIn(false);
      setProblem("");
    } catch (exc) {
      setCaller(null);
      if (exc instanceof ApiError && exc.status === 401) setNeedsSignIn(true);
      else setProblem(errorMessage(exc));
    }
  }, []);

  useEffect(() => {
    void refreshMe();
    const onPop = () => setPath(currentPath());
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, [refreshMe]);

  const go = (to: string) => (event: MouseEvent) => {
    event.preventDefault();
    window.history.pushState(null, "", to);
    setPath(to);
  };

  // The sign-in page is offered only where signing in means something: the server
  // refused /api/me (401), or it authenticates callers (to sign in as someone else).
  const signInOffered = needsSignIn || Boolean(caller?.authenticated);
  const showSignIn = needsSignIn || (path === "/sign-in" && signInOffered);
  const page = PAGES.find((p) => p.path === path);

  async function signOut() {
    try {
      await call("DELETE", "/api/session");
    } catch (exc) {
      setProblem(errorMessage(exc));
    }
    await refreshMe();
  }

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header>
        <p class="brand">packetbus console</p>
        <nav aria-label="Pages">
          <ul>
            {PAGES.map((p) => (
              <li key={p.path}>
                <a
                  href={p.path}
                  onClick={go(p.path)}
                  aria-current={p.path === path && !showSignIn ? "page" : undefined}
                >
                  {p.title}
                </a>
              </li>
            ))}
            {signInOffered && (
              <li>
                <a href="/sign-in" onClick={go("/sign-in")} aria-current={showSignIn ? "page" : undefined}>
                  {/* Signed in already: the link is for acting as someone else. */}
                  {caller?.authenticated ? "Sign in as another" : "Sign in"}
                </a>
              </li>
            )}
          </ul>
        </nav>
        <p class="who" aria-live="polite">
          {caller ? (
            <>
              {caller.authenticated ? "Signed in as " : "Acting as "}
              <strong>{caller.principal}</strong>
              {caller.roles.length > 0 && ` (${caller.roles.join(", ")})`}
              {caller.authenticated && (
                <button type="button" class="link" onClick={() => void signOut()}>
                  Sign out
                </button>
              )}
            </>
          ) : (
            "Not signed in"
          )}
        </p>
      </header>
      <main id="main" tabIndex={-1}>
        {problem && (
          <p role="alert" class="error">
            {problem}
          </p>
        )}
        {showSignIn ? (
          <SignInPage
            onSignedIn={async () => {
              await refreshMe();
              window.history.pushState(null, "", "/agents");
              setPath("/agents");
            }}
          />
        ) : page === undefined ? (
          <section aria-labelledby="nf">
            <h1 id="nf">Page not found</h1>
            <p>Choose a page above.</p>
          </section>
        ) : caller === null ? (
          <p>Loading…</p>
        ) : page.path === "/overview" ? (
          <OverviewPage />
        ) : page.path === "/agents" ? (
          <AgentsPage />
        ) : page.path === "/topics" ? (
          <TopicsPage />
        ) : page.path === "/queues" ? (
          <TaskQueuesPage />
        ) : page.path === "/findings" ? (
          <FindingsPage />
        ) : page.path === "/governance" ? (
          <GovernancePage caller={caller} />
        ) : page.path === "/carcel" ? (
          <CarcelPage caller={caller} />
        ) : (
          <CustodyPage />
        )}
      </main>
    </>
  );
}

render(<App />, document.getElementById("app") as HTMLElement);

// Task queues: every queue with its tasks by status and priority (GET /api/queues,
// live), a queue's tasks filterable by status (GET /api/queues/{q}/tasks) kept current
// by its task events (GET /api/queues/{q}/events, Server-Sent Events), and a task's
// claims, results and failures (GET /api/queues/{q}/tasks/{id}).
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { call, errorMessage, seg } from "../api";
import {
  STATUSES,
  type QueueSummary,
  type Status,
  type TaskEvent,
  type TaskState,
  type TaskView,
  claimsOf,
  eventLine,
  priorityRows,
  queuePath,
  statusName,
  statusWord,
  tasksQuery,
} from "../queues";
import { useLive } from "../live";

const RECENT_EVENTS = 20; // task events kept on screen
const RELOAD_MS = 1000; // the task list is re-read at most this often while events come

export function TaskQueuesPage() {
  const [prefix, setPrefix] = useState("");
  const [applied, setApplied] = useState("");
  const [selected, setSelected] = useState<string | null>(null);
  const live = useLive<{ queues: QueueSummary[]; truncated: boolean }>("/api/queues", { prefix: applied });
  const queues = live.data?.queues ?? [];
  const shown = queues.find((q) => q.queue === selected) ?? null;

  return (
    <section aria-labelledby="queues-title">
      <h1 id="queues-title">Task queues</h1>
      <form
        class="filters"
        onSubmit={(event) => {
          event.preventDefault();
          setApplied(prefix.trim());
        }}
      >
        <label for="queues-prefix">Queue name starts with</label>
        <input
          id="queues-prefix"
          type="text"
          value={prefix}
          onInput={(e) => setPrefix((e.target as HTMLInputElement).value)}
        />
        <button type="submit">Filter</button>
      </form>
      <p class="status" aria-live="polite">
        Updates: {live.status}. {queues.length} {queues.length === 1 ? "queue" : "queues"}.
      </p>
      {live.problem && (
        <p role="alert" class="error">
          {live.problem}
        </p>
      )}
      {queues.length === 0 ? (
        live.status === "live" && <p>No task queues{applied ? " with this prefix" : ""} that you may read.</p>
      ) : (
        <div class="scroll">
          <table>
            <caption class="sr-only">Task queues and their tasks by status</caption>
            <thead>
              <tr>
                <th scope="col">Queue</th>
                <th scope="col">Tasks</th>
                {STATUSES.map((s) => (
                  <th scope="col" key={s}>
                    {s}
                  </th>
                ))}
                <th scope="col">Not counted</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {queues.map((q) => (
                <tr key={q.queue} data-queue={q.queue} class={q.queue === selected ? "selected" : undefined}>
                  <th scope="row">{q.queue}</th>
                  <td>{q.tasks}</td>
                  {STATUSES.map((s) => (
                    <td key={s}>{q.byStatus[statusName(s)] ?? 0}</td>
                  ))}
                  <td>{q.unclassified}</td>
                  <td>
                    <button
                      type="button"
                      aria-pressed={q.queue === selected}
                      onClick={() => setSelected(q.queue === selected ? null : q.queue)}
                    >
                      {q.queue === selected ? "Hide" : "Show"}
                      <span class="sr-only"> tasks of {q.queue}</span>
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {live.data?.truncated && <p>Only the first 1000 queues are shown: filter by name to see others.</p>}
      {shown && <QueueDetail key={shown.queue} summary={shown} />}
    </section>
  );
}

function QueueDetail({ summary }: { summary: QueueSummary }) {
  const queue = summary.queue;
  const [status, setStatus] = useState<Status | "">("");
  const [tasks, setTasks] = useState<TaskState[]>([]);
  const [next, setNext] = useState("");
  const [problem, setProblem] = useState("");
  const [events, setEvents] = useState<TaskEvent[]>([]);
  const [streaming, setStreaming] = useState("connecting");
  const [selected, setSelected] = useState<string | null>(null);
  const [version, setVersion] = useState(0); // bumped by each event of the selected task
  const selectedRef = useRef<string | null>(null);
  selectedRef.current = selected;

  const load = useCallback(async () => {
    try {
      // Every page so far, again: the list stays whole as tasks change status.
      const all: TaskState[] = [];
      let token = "";
      do {
        const page = await call<{ tasks: TaskState[]; nextPageToken: string }>(
          "GET",
          `${queuePath(queue)}/tasks${tasksQuery(status, token)}`,
        );
        all.push(...page.tasks);
        token = page.nextPageToken;
      } while (token && all.length < 1000);
      setTasks(all);
      setNext(token);
      setProblem("");
    } catch (exc) {
      setProblem(errorMessage(exc));
    }
  }, [queue, status]);

  useEffect(() => {
    void load();
  }, [load]);
  // The stream stays open while the status filter changes; it reloads with the filter in use.
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    let timer: number | undefined;
    const source = new EventSource(`${queuePath(queue)}/events`);
    source.addEventListener("start", () => setStreaming("live"));
    source.addEventListener("task", (message) => {
      setStreaming("live");
      const event = JSON.parse((message as MessageEvent<string>).data) as TaskEvent;
      setEvents((current) => [event, ...current].slice(0, RECENT_EVENTS));
      if (event.taskId === selectedRef.current) setVersion((v) => v + 1);
      // Throttled, not debounced: a queue that never goes quiet is still re-read.
      if (timer === undefined) {
        timer = window.setTimeout(() => {
          timer = undefined;
          void loadRef.current();
        }, RELOAD_MS);
      }
    });
    source.addEventListener("error", (message) => {
      const data = (message as MessageEvent<string>).data;
      if (data) {
        source.close();
        setStreaming("closed");
        try {
          setProblem((JSON.parse(data) as { error: string }).error);
        } catch {
          setProblem(data);
        }
        return;
      }
      setStreaming(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
    return () => {
      window.clearTimeout(timer);
      source.close();
    };
  }, [queue]);

  const priorities = priorityRows(summary);
  return (
    <section aria-labelledby="queue-title" class="detail">
      <h2 id="queue-title">
        Queue <code>{queue}</code>
      </h2>
      <h3>By priority</h3>
      {priorities.length === 0 ? (
        <p>No tasks counted.</p>
      ) : (
        <table>
          <caption class="sr-only">Tasks of {queue} by priority and status</caption>
          <thead>
            <tr>
              <th scope="col">Priority</th>
              {STATUSES.map((s) => (
                <th scope="col" key={s}>
                  {s}
                </th>
              ))}
              <th scope="col">All</th>
            </tr>
          </thead>
          <tbody>
            {priorities.map((row) => (
              <tr key={row.priority}>
                <th scope="row">{row.priority}</th>
                {STATUSES.map((s) => (
                  <td key={s}>{row.byStatus[s]}</td>
                ))}
                <td>{row.total}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h3>Tasks</h3>
      <div class="filters">
        <label for="tasks-status">Status</label>
        <select
          id="tasks-status"
          value={status}
          onChange={(e) => setStatus((e.target as HTMLSelectElement).value as Status | "")}
        >
          <option value="">all</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
        <span class="status" aria-live="polite">
          Updates: {streaming}. {tasks.length} {tasks.length === 1 ? "task" : "tasks"}.
        </span>
      </div>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {tasks.length === 0 ? (
        <p>No tasks{status ? ` ${status}` : ""}.</p>
      ) : (
        <div class="scroll">
          <table>
            <caption class="sr-only">Tasks of {queue}, first posted first</caption>
            <thead>
              <tr>
                <th scope="col">Task</th>
                <th scope="col">Status</th>
                <th scope="col">Priority</th>
                <th scope="col">Capability</th>
                <th scope="col">Claims</th>
                <th scope="col">Failures</th>
                <th scope="col">Worker</th>
                <th scope="col">Lease ends</th>
                <th scope="col">Updated</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {tasks.map((t) => (
                <tr key={t.taskId} data-task={t.taskId}>
                  <th scope="row">
                    <code>{t.taskId}</code>
                  </th>
                  <td>
                    <span class={`badge ${statusWord(t.status)}`}>{statusWord(t.status)}</span>
                  </td>
                  <td>{t.priority}</td>
                  <td>{t.requiredCapability || "—"}</td>
                  <td>{t.claims}</td>
                  <td>
                    {t.failures} of {t.maxAttempts}
                  </td>
                  <td>{t.worker || "—"}</td>
                  <td>{t.leaseExpiresAt ?? "—"}</td>
                  <td>{t.updatedAt ?? ""}</td>
                  <td>
                    <button
                      type="button"
                      aria-pressed={t.taskId === selected}
                      onClick={() => setSelected(t.taskId === selected ? null : t.taskId)}
                    >
                      {t.taskId === selected ? "Hide" : "Show"}
                      <span class="sr-only"> task {t.taskId}</span>
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {next && <p>Only the first 1000 tasks are shown: filter by status to see others.</p>}
      {selected && <TaskDetail key={selected} queue={queue} taskId={selected} version={version} />}
      <h3>Recent changes</h3>
      {events.length === 0 ? (
        <p>No changes since this page opened.</p>
      ) : (
        <ol class="events" aria-label={`Recent task changes of ${queue}, newest first`}>
          {events.map((e) => (
            <li key={e.cursor}>
              <time dateTime={e.at ?? undefined}>{e.at ?? ""}</time> {eventLine(e)}
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function TaskDetail({ queue, taskId, version }: { queue: string; taskId: string; version: number }) {
  const [view, setView] = useState<TaskView | null>(null);
  const [problem, setProblem] = useState("");

  useEffect(() => {
    let current = true;
    call<TaskView>("GET", `${queuePath(queue)}/tasks/${seg(taskId)}`).then(
      (doc) => {
        if (!current) return;
        setView(doc);
        setProblem("");
      },
      (exc: unknown) => current && setProblem(errorMessage(exc)),
    );
    return () => {
      current = false;
    };
  }, [queue, taskId, version]);

  if (problem) {
    return (
      <p role="alert" class="error">
        {problem}
      </p>
    );
  }
  if (!view) return <p>Loading task {taskId}…</p>;
  const t = view.task;
  const claims = claimsOf(view.history);
  return (
    <section aria-labelledby="task-title" class="detail">
      <h3 id="task-title">
        Task <code>{t.taskId}</code>
      </h3>
      <dl class="facts">
        <dt>Status</dt>
        <dd>{statusWord(t.status)}</dd>
        <dt>Priority</dt>
        <dd>{t.priority}</dd>
        <dt>Failures</dt>
        <dd>
          {t.failures} of {t.maxAttempts} attempts
        </dd>
        <dt>Worker</dt>
        <dd>{t.worker || "—"}</dd>
        <dt>Fencing token</dt>
        <dd>{t.fencingToken}</dd>
        <dt>Posted</dt>
        <dd>{t.postedAt ?? ""}</dd>
        <dt>Tracking id</dt>
        <dd>
          <code>{t.packet?.packet?.trackingId ?? ""}</code> (its chain: Custody page)
        </dd>
      </dl>
      <h4>Claims</h4>
      {claims.length === 0 ? (
        <p>Never claimed.</p>
      ) : (
        <table>
          <caption class="sr-only">Claims of task {t.taskId}, oldest first</caption>
          <thead>
            <tr>
              <th scope="col">Claim</th>
              <th scope="col">Worker</th>
              <th scope="col">At</th>
              <th scope="col">Ended</th>
            </tr>
          </thead>
          <tbody>
            {claims.map((c) => (
              <tr key={c.number}>
                <th scope="row">{c.number}</th>
                <td>{c.worker}</td>
                <td>{c.at}</td>
                <td>{c.outcome ? `${c.outcome}${c.reason ? `: ${c.reason}` : ""}` : "holds, or its lease ran out"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h4>Results and failures</h4>
      {view.results.length === 0 ? (
        <p>No attempt reported yet.</p>
      ) : (
        <table>
          <caption class="sr-only">Reported attempts of task {t.taskId}, oldest first</caption>
          <thead>
            <tr>
              <th scope="col">Outcome</th>
              <th scope="col">Worker</th>
              <th scope="col">Fencing token</th>
              <th scope="col">Summary or error</th>
              <th scope="col">Result</th>
              <th scope="col">At</th>
            </tr>
          </thead>
          <tbody>
            {view.results.map((r) => (
              <tr key={`${r.fencingToken}-${r.at ?? ""}`} class={r.completed ? undefined : "failed"}>
                <th scope="row">{r.completed ? "completed" : "failed"}</th>
                <td>{r.worker}</td>
                <td>{r.fencingToken}</td>
                <td>{r.completed ? r.summary : r.error}</td>
                <td>{r.result ? <code>{JSON.stringify(r.result)}</code> : "—"}</td>
                <td>{r.at ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h4>History</h4>
      <table>
        <caption class="sr-only">Custody history of task {t.taskId} (unverified here)</caption>
        <thead>
          <tr>
            <th scope="col">#</th>
            <th scope="col">Action</th>
            <th scope="col">Actor</th>
            <th scope="col">Concerning</th>
            <th scope="col">Reason</th>
            <th scope="col">At</th>
          </tr>
        </thead>
        <tbody>
          {view.history.map((h) => (
            <tr key={h.sequence}>
              <th scope="row">{h.sequence}</th>
              <td>{h.action}</td>
              <td>{h.actor}</td>
              <td>{h.counterpart}</td>
              <td>{h.reason}</td>
              <td>{h.occurredAt}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

// Findings: escalations with the findings they carry (GET /api/escalations, live), and a
// task's findings with the conflicts between them (GET /api/findings?taskId=, live),
// each conflict beside the two findings behind it.
import { useState } from "preact/hooks";

import {
  type Escalation,
  type Finding,
  type TaskFindings,
  confidenceText,
  conflictCounts,
  findingsParams,
  newestFirst,
  stance,
  validThreshold,
} from "../findings";
import { useLive } from "../live";

function FindingSummary({ finding }: { finding: Finding | null }) {
  if (!finding) return <span class="muted">no longer kept</span>;
  return (
    <>
      <code>{finding.findingId}</code> {stance(finding)} “{finding.claim}” at {confidenceText(finding.confidence)}{" "}
      <span class="muted">({finding.origin})</span>
    </>
  );
}

export function FindingsPage() {
  const [taskId, setTaskId] = useState("");
  const [threshold, setThreshold] = useState("");
  const [applied, setApplied] = useState<{ taskId: string; threshold: string } | null>(null);
  const [formProblem, setFormProblem] = useState("");
  const escalations = useLive<{ escalations: Escalation[]; truncated: boolean }>("/api/escalations");
  const findings = useLive<TaskFindings>(
    applied ? "/api/findings" : null,
    applied ? findingsParams(applied.taskId, applied.threshold) : {},
  );

  function show(task: string, limit: string) {
    setTaskId(task);
    setThreshold(limit);
    setApplied({ taskId: task, threshold: limit });
    document.getElementById("findings-of")?.focus();
  }

  const escalated = newestFirst(escalations.data?.escalations ?? []);
  const view = findings.data;
  const inConflict = conflictCounts(view?.conflicts ?? []);
  return (
    <section aria-labelledby="findings-title">
      <h1 id="findings-title">Findings</h1>

      <h2>Escalations</h2>
      <p class="status" aria-live="polite">
        Updates: {escalations.status}. {escalated.length} {escalated.length === 1 ? "escalation" : "escalations"}.
      </p>
      {escalations.problem && (
        <p role="alert" class="error">
          {escalations.problem}
        </p>
      )}
      {escalated.length === 0 ? (
        escalations.status === "live" && <p>Nothing has been escalated.</p>
      ) : (
        <div class="scroll">
          <table>
            <caption class="sr-only">Escalations, newest first, with the findings they carry</caption>
            <thead>
              <tr>
                <th scope="col">Task</th>
                <th scope="col">Reason</th>
                <th scope="col">By</th>
                <th scope="col">At</th>
                <th scope="col">Findings behind it</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {escalated.map((e) => (
                <tr key={e.trackingId} data-escalation={e.trackingId}>
                  <th scope="row">
                    <code>{e.taskId}</code>
                  </th>
                  <td>{e.reason}</td>
                  <td>{e.origin}</td>
                  <td>{e.dispatchedAt}</td>
                  <td>
                    <ul class="plain">
                      {e.findings.map((f) => (
                        <li key={f.findingId}>
                          <FindingSummary finding={f} />
                        </li>
                      ))}
                    </ul>
                  </td>
                  <td>
                    <button type="button" onClick={() => show(e.taskId, "")}>
                      Findings<span class="sr-only"> of task {e.taskId}</span>
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {escalations.data?.truncated && <p>Only the first 1000 escalations are shown.</p>}

      <h2 id="findings-of" tabIndex={-1}>
        A task's findings and conflicts
      </h2>
      <form
        class="filters"
        onSubmit={(event) => {
          event.preventDefault();
          if (!taskId.trim()) return setFormProblem("Give a task id.");
          if (!validThreshold(threshold)) return setFormProblem("The threshold is a number from 0 to 1.");
          setFormProblem("");
          setApplied({ taskId: taskId.trim(), threshold: threshold.trim() });
        }}
      >
        <label for="findings-task">Task id</label>
        <input
          id="findings-task"
          type="text"
          required
          value={taskId}
          onInput={(e) => setTaskId((e.target as HTMLInputElement).value)}
        />
        <label for="findings-threshold">Conflict threshold (0-1, optional)</label>
        <input
          id="findings-threshold"
          type="text"
          inputMode="decimal"
          size={6}
          aria-describedby="threshold-help"
          value={threshold}
          onInput={(e) => setThreshold((e.target as HTMLInputElement).value)}
        />
        <button type="submit">Show</button>
        <span id="threshold-help" class="muted">
          Confidences further apart than this conflict (default 0.3); opposite claims always do.
        </span>
      </form>
      {formProblem && (
        <p role="alert" class="error">
          {formProblem}
        </p>
      )}
      {findings.problem && (
        <p role="alert" class="error">
          {findings.problem}
        </p>
      )}
      {applied && view && (
        <>
          <p class="status" aria-live="polite">
            Task <code>{view.taskId}</code>: {view.findings.length} findings, {view.conflicts.length} conflicts.
            Updates: {findings.status}.
          </p>
          <h3>Conflicts</h3>
          {view.conflicts.length === 0 ? (
            <p>No conflicts.</p>
          ) : (
            <div class="scroll">
              <table>
                <caption class="sr-only">Conflicts of task {view.taskId} with the two findings behind each</caption>
                <thead>
                  <tr>
                    <th scope="col">Subject</th>
                    <th scope="col">Why</th>
                    <th scope="col">Earlier finding</th>
                    <th scope="col">Later finding</th>
                  </tr>
                </thead>
                <tbody>
                  {view.conflicts.map((c) => (
                    <tr key={`${c.firstFindingId}/${c.secondFindingId}`}>
                      <th scope="row">{c.subject}</th>
                      <td>{c.reason}</td>
                      <td>
                        <FindingSummary finding={c.first} />
                      </td>
                      <td>
                        <FindingSummary finding={c.second} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <h3>Findings</h3>
          {view.findings.length === 0 ? (
            <p>No findings for this task.</p>
          ) : (
            <div class="scroll">
              <table>
                <caption class="sr-only">Findings of task {view.taskId}, posted first first</caption>
                <thead>
                  <tr>
                    <th scope="col">Finding</th>
                    <th scope="col">Claim</th>
                    <th scope="col">Stance</th>
                    <th scope="col">Confidence</th>
                    <th scope="col">Subject</th>
                    <th scope="col">From</th>
                    <th scope="col">Citations</th>
                    <th scope="col">Conflicts</th>
                  </tr>
                </thead>
                <tbody>
                  {view.findings.map((f) => (
                    <tr key={f.findingId} data-finding={f.findingId} class={inConflict.has(f.findingId) ? "conflicted" : undefined}>
                      <th scope="row">
                        <code>{f.findingId}</code>
                      </th>
                      <td>{f.claim}</td>
                      <td>{stance(f)}</td>
                      <td>{confidenceText(f.confidence)}</td>
                      <td>{f.subject || "—"}</td>
                      <td>
                        {f.origin}
                        {f.workerId && f.workerId !== f.origin ? ` (for ${f.workerId})` : ""}
                      </td>
                      <td>
                        <ul class="plain">
                          {f.citations.map((c) => (
                            <li key={c}>{c}</li>
                          ))}
                        </ul>
                      </td>
                      <td>{inConflict.get(f.findingId) ?? 0}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </section>
  );
}

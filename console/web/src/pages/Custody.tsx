// Custody: a packet's chain hop by hop with the server's verdicts
// (GET /api/custody/{id}) and a download of its export line (.../export).
import { useEffect, useState } from "preact/hooks";

import { call, errorMessage, seg } from "../api";
import { type CustodyReport, hopRows, overall } from "../custody";

export function CustodyPage() {
  const [input, setInput] = useState("");
  const [shown, setShown] = useState("");
  const [report, setReport] = useState<CustodyReport | null>(null);
  const [problem, setProblem] = useState("");

  // A link from another page names the packet: /custody?id=<tracking id>.
  useEffect(() => {
    const linked = new URLSearchParams(window.location.search).get("id");
    if (linked) {
      setInput(linked);
      void show(linked);
    }
  }, []);

  async function look(event: Event) {
    event.preventDefault();
    await show(input.trim());
  }

  async function show(id: string) {
    setProblem("");
    setReport(null);
    try {
      setReport(await call<CustodyReport>("GET", `/api/custody/${seg(id)}`));
      setShown(id);
    } catch (exc) {
      setProblem(errorMessage(exc));
    }
  }

  const verdict = report ? overall(report) : null;
  return (
    <section aria-labelledby="custody-title">
      <h1 id="custody-title">Custody</h1>
      <form class="filters" onSubmit={(event) => void look(event)}>
        <label for="tracking-id">Tracking id</label>
        <input
          id="tracking-id"
          type="text"
          required
          size={40}
          spellcheck={false}
          value={input}
          onInput={(e) => setInput((e.target as HTMLInputElement).value)}
        />
        <button type="submit">Show chain</button>
      </form>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {report && verdict && (
        <>
          <p class={verdict.ok ? "ok" : "error"} role="status">
            <strong>{verdict.ok ? "✓ " : "✗ "}</strong>
            {verdict.text}
          </p>
          <table>
            <caption>
              Chain of custody of <code>{shown}</code>
            </caption>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">Hop</th>
                <th scope="col">Actor</th>
                <th scope="col">Key id</th>
                <th scope="col">Time</th>
                <th scope="col">Verdict</th>
              </tr>
            </thead>
            <tbody>
              {hopRows(report).map((row) => (
                <tr key={row.index} data-verdict={row.ok ? "ok" : "bad"}>
                  <td>{row.index}</td>
                  <th scope="row">{row.hop}</th>
                  <td>{row.actor}</td>
                  <td>
                    <code>{row.keyId}</code>
                  </td>
                  <td>{row.time}</td>
                  <td class={row.ok ? "ok" : "error"}>
                    {row.ok ? "✓ " : "✗ "}
                    {row.verdict}
                    {row.detail && !row.ok ? `: ${row.detail}` : ""}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <p>
            <a class="button" href={`/api/custody/${seg(shown)}/export`} download={`${shown}.jsonl`}>
              Download the export line
            </a>{" "}
            (check it offline with <code>packetbus verify --file {shown}.jsonl</code>)
          </p>
        </>
      )}
    </section>
  );
}

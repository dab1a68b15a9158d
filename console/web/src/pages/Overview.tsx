// Overview: the server's metrics as charts over the last minutes (GET /api/overview, then
// its samples live from /api/overview/events). Each chart is a small SVG with a text
// alternative: per series its current value and its min and max over the window.
import { useEffect, useState } from "preact/hooks";

import { call, errorMessage } from "../api";
import { streamError } from "../live";
import {
  CHARTS,
  type ChartInfo,
  type OverviewDoc,
  type Sample,
  appendSample,
  formatValue,
  linePath,
  niceTop,
  points,
  summarize,
} from "../overview";

const WIDTH = 480;
const HEIGHT = 120;
const STYLES = [
  { stroke: "#14305a", dash: undefined },
  { stroke: "#a4001d", dash: "6 4" },
];

export function OverviewPage() {
  const [doc, setDoc] = useState<OverviewDoc | null>(null);
  const [samples, setSamples] = useState<Sample[]>([]);
  const [status, setStatus] = useState("connecting");
  const [failed, setFailed] = useState("");

  useEffect(() => {
    let windowSeconds = 600;
    const source = new EventSource("/api/overview/events");
    source.addEventListener("history", (message) => {
      const history = JSON.parse((message as MessageEvent<string>).data) as OverviewDoc;
      windowSeconds = history.windowSeconds;
      setDoc(history);
      setSamples(history.samples);
      setStatus("live");
      setFailed("");
    });
    source.addEventListener("sample", (message) => {
      const sample = JSON.parse((message as MessageEvent<string>).data) as Sample;
      setSamples((current) => appendSample(current, sample, windowSeconds));
    });
    source.addEventListener("error", (message) => {
      const text = (message as MessageEvent<string>).data;
      if (text) setFailed(streamError(text));
      if (source.readyState === EventSource.CLOSED) {
        // Refused before it began (no --metrics-url: 409; not signed in: 401): the
        // plain GET says why.
        setStatus("closed");
        call<OverviewDoc>("GET", "/api/overview").then(
          () => setFailed(""),
          (exc: unknown) => setFailed(errorMessage(exc)),
        );
      } else {
        setStatus("reconnecting");
      }
    });
    return () => source.close();
  }, []);

  const latest = samples.length ? samples[samples.length - 1] : null;
  const replicas = latest?.replicas ?? (doc?.replicas ?? []).map((url) => ({ url, up: false, error: null }));
  return (
    <section aria-labelledby="overview-title">
      <h1 id="overview-title">Overview</h1>
      <p class="status" aria-live="polite">
        Updates: {status}.
        {doc &&
          ` A sample every ${doc.intervalSeconds} s, the last ${Math.round(doc.windowSeconds / 60)} minutes kept.`}
      </p>
      {failed && (
        <p role="alert" class="error">
          {failed}
        </p>
      )}
      {doc && (
        <>
          <h2>Metrics endpoints</h2>
          <ul class="replicas">
            {replicas.map((replica) => (
              <li key={replica.url}>
                <code>{replica.url}</code>{" "}
                {replica.up ? (
                  <span class="badge live">scraped</span>
                ) : (
                  <span class="badge stale">not scraped{replica.error ? `: ${replica.error}` : ""}</span>
                )}
              </li>
            ))}
          </ul>
          {replicas.some((replica) => !replica.up) && (
            <p class="muted">
              While an endpoint is not scraped, the rates and latencies are gaps (a sum missing a
              replica would read low); the carcel and store memory come from any endpoint that
              read the store.
            </p>
          )}
          <div class="charts">
            {CHARTS.map((chart) => (
              <Chart key={chart.id} chart={chart} samples={samples} windowSeconds={doc.windowSeconds} />
            ))}
          </div>
        </>
      )}
    </section>
  );
}

/** A span of seconds for an axis: "45 s" or "3 min". */
function spanLabel(seconds: number): string {
  return seconds < 120 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
}

function Chart({ chart, samples, windowSeconds }: { chart: ChartInfo; samples: Sample[]; windowSeconds: number }) {
  const end = samples.length ? samples[samples.length - 1].at : 0;
  // The x axis spans the history there is, up to the window (not 10 minutes of nothing).
  const start = samples.length ? Math.max(end - windowSeconds, samples[0].at) : end - windowSeconds;
  const lines = chart.series.map((info) => {
    const series = points(samples, info.key);
    return { info, series, summary: summarize(series) };
  });
  const top = niceTop(Math.max(0, ...lines.map((line) => line.summary.max ?? 0)), chart.unit);
  const frame = { width: WIDTH, height: HEIGHT, start, end, top };
  const titleId = `chart-${chart.id}`;
  const described = lines
    .map(({ info, summary }) => `${info.label} now ${formatValue(summary.current, chart.unit)}`)
    .join(", ");
  return (
    <figure class="chart" aria-labelledby={titleId}>
      <figcaption id={titleId}>
        <h3>{chart.title}</h3>
      </figcaption>
      <svg
        viewBox={`-64 -8 ${WIDTH + 72} ${HEIGHT + 28}`}
        role="img"
        aria-label={`${chart.title}: ${described}. Details in the table below.`}
      >
        <line x1={0} y1={HEIGHT} x2={WIDTH} y2={HEIGHT} class="axis" />
        <line x1={0} y1={0} x2={0} y2={HEIGHT} class="axis" />
        <line x1={0} y1={0} x2={WIDTH} y2={0} class="grid" />
        <text x={-6} y={4} text-anchor="end" class="tick">
          {formatValue(top, chart.unit)}
        </text>
        <text x={-6} y={HEIGHT} text-anchor="end" class="tick">
          0
        </text>
        <text x={0} y={HEIGHT + 16} class="tick">
          −{spanLabel(end - start)}
        </text>
        <text x={WIDTH} y={HEIGHT + 16} text-anchor="end" class="tick">
          now
        </text>
        {lines.map(({ info, series }, index) => (
          <path
            key={info.key}
            d={linePath(series, frame)}
            fill="none"
            stroke={STYLES[index % STYLES.length].stroke}
            stroke-dasharray={STYLES[index % STYLES.length].dash}
            stroke-width={2}
            stroke-linecap="round"
          />
        ))}
      </svg>
      <table class="summary">
        <caption class="sr-only">{chart.title}: current value, minimum and maximum over the window</caption>
        <thead>
          <tr>
            <th scope="col">Series</th>
            <th scope="col">Now</th>
            <th scope="col">Min</th>
            <th scope="col">Max</th>
          </tr>
        </thead>
        <tbody>
          {lines.map(({ info, summary }, index) => (
            <tr key={info.key} data-series={info.key}>
              <th scope="row">
                <svg class="key" viewBox="0 0 24 8" aria-hidden="true">
                  <line
                    x1={0}
                    y1={4}
                    x2={24}
                    y2={4}
                    stroke={STYLES[index % STYLES.length].stroke}
                    stroke-dasharray={STYLES[index % STYLES.length].dash}
                    stroke-width={2}
                  />
                </svg>{" "}
                {info.label}
              </th>
              <td>{formatValue(summary.current, chart.unit)}</td>
              <td>{formatValue(summary.min, chart.unit)}</td>
              <td>{formatValue(summary.max, chart.unit)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}

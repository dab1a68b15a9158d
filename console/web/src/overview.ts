// The Overview page's data: GET /api/overview's history and /api/overview/events'
// samples (packetbus_console.overview), kept to the server's window, and what a chart
// draws and says of each series. The server derives the rates; null is a gap (a replica
// not scraped, no call to time), never a zero.

export interface ReplicaState {
  url: string;
  up: boolean;
  error: string | null;
}

export interface Sample {
  at: number; // seconds since the epoch
  replicas: ReplicaState[];
  values: Record<string, number | null>;
  totals: Record<string, number | null>;
}

export interface OverviewDoc {
  intervalSeconds: number;
  windowSeconds: number;
  replicas: string[];
  series: string[];
  samples: Sample[];
}

export type Unit = "perSecond" | "ms" | "count" | "bytes";

export interface SeriesInfo {
  key: string; // a key of Sample.values
  label: string;
}

export interface ChartInfo {
  id: string;
  title: string;
  unit: Unit;
  series: SeriesInfo[];
}

// The charts, in the order shown: each one unit, at most two lines (told apart by
// dashes as well as colour).
export const CHARTS: ChartInfo[] = [
  {
    id: "packets",
    title: "Packets per second",
    unit: "perSecond",
    series: [
      { key: "dispatchedPerSecond", label: "in (dispatched)" },
      { key: "deliveredPerSecond", label: "out (delivered)" },
    ],
  },
  {
    id: "latency",
    title: "Dispatch latency",
    unit: "ms",
    series: [
      { key: "dispatchLatencyP50Ms", label: "p50" },
      { key: "dispatchLatencyP99Ms", label: "p99" },
    ],
  },
  {
    id: "redeliveries",
    title: "Redeliveries and carcelings per second",
    unit: "perSecond",
    series: [
      { key: "redeliveriesPerSecond", label: "redelivered" },
      { key: "carceledPerSecond", label: "carceled" },
    ],
  },
  {
    id: "governance",
    title: "Held and rejected per second",
    unit: "perSecond",
    series: [
      { key: "heldPerSecond", label: "held" },
      { key: "rejectedPerSecond", label: "rejected" },
    ],
  },
  { id: "carcel", title: "Carcel size", unit: "count", series: [{ key: "carcelPackets", label: "packets" }] },
  {
    id: "memory",
    title: "Store memory",
    unit: "bytes",
    series: [{ key: "storeMemoryBytes", label: "used" }],
  },
];

/** `history` with `sample` appended, keeping only samples within `windowSeconds` of it. */
export function appendSample(history: Sample[], sample: Sample, windowSeconds: number): Sample[] {
  const since = sample.at - windowSeconds;
  const kept = history.filter((s) => s.at > since && s.at < sample.at);
  kept.push(sample);
  return kept;
}

export interface Point {
  at: number;
  value: number | null;
}

/** The points of series `key` (null where the sample has no value for it). */
export function points(samples: Sample[], key: string): Point[] {
  return samples.map((s) => ({ at: s.at, value: s.values[key] ?? null }));
}

export interface Summary {
  current: number | null; // the newest sample's value (null: a gap now)
  min: number | null; // over the known values
  max: number | null;
  known: number; // how many samples have a value
}

/** What the text alternative says of a series. */
export function summarize(series: Point[]): Summary {
  const known = series.map((p) => p.value).filter((v): v is number => v !== null);
  return {
    current: series.length ? series[series.length - 1].value : null,
    min: known.length ? Math.min(...known) : null,
    max: known.length ? Math.max(...known) : null,
    known: known.length,
  };
}

/** `value` for a person, in `unit` ("no data" for a gap). */
export function formatValue(value: number | null, unit: Unit): string {
  if (value === null) return "no data";
  switch (unit) {
    case "perSecond":
      return `${trim(value)}/s`;
    case "ms":
      return `${trim(value)} ms`;
    case "count":
      return trim(value);
    case "bytes":
      return bytes(value);
  }
}

function trim(value: number): string {
  if (value === 0) return "0";
  if (Math.abs(value) >= 100) return Math.round(value).toLocaleString("en-US");
  return Number(value.toPrecision(3)).toString();
}

function bytes(value: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let scaled = value;
  let index = 0;
  while (Math.abs(scaled) >= 1024 && index < units.length - 1) {
    scaled /= 1024;
    index += 1;
  }
  return `${index === 0 ? Math.round(scaled) : Number(scaled.toPrecision(3))} ${units[index]}`;
}

/**
 * A round upper bound for a y axis of `unit` holding `max`: 1, 2 or 5 times a power of
 * ten (of the KiB, MiB... it is shown in, for bytes).
 */
export function niceTop(max: number, unit: Unit): number {
  if (unit !== "bytes" || !(max >= 1024)) return niceMax(max);
  const scale = 1024 ** Math.min(4, Math.floor(Math.log(max) / Math.log(1024)));
  return niceMax(max / scale) * scale;
}

/** A round upper bound for a y axis holding `max` (1, 2 or 5 times a power of ten). */
export function niceMax(max: number): number {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

export interface Frame {
  width: number;
  height: number;
  start: number; // seconds since the epoch at x = 0
  end: number; // ... at x = width
  top: number; // the value at y = 0 (the bottom is 0)
}

/**
 * An SVG path drawing `series` in `frame`: a line through the known points, broken
 * where a value is null (a gap is drawn as nothing, not as a fall to zero). A point
 * alone between gaps is a dot-long segment so it still shows.
 */
export function linePath(series: Point[], frame: Frame): string {
  const span = frame.end - frame.start || 1;
  const x = (at: number) => ((at - frame.start) / span) * frame.width;
  const y = (value: number) => frame.height - (Math.min(value, frame.top) / frame.top) * frame.height;
  const parts: string[] = [];
  let open = false;
  for (let i = 0; i < series.length; i++) {
    const point = series[i];
    if (point.value === null || point.at < frame.start) {
      open = false;
      continue;
    }
    const px = x(point.at).toFixed(1);
    const py = y(point.value).toFixed(1);
    if (open) {
      parts.push(`L${px},${py}`);
    } else {
      parts.push(`M${px},${py}`);
      const next = series[i + 1];
      if (!next || next.value === null) parts.push(`h1`);
      open = true;
    }
  }
  return parts.join(" ");
}

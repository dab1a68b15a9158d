import { describe, expect, it } from "vitest";

import {
  CHARTS,
  type Sample,
  appendSample,
  formatValue,
  linePath,
  niceMax,
  niceTop,
  points,
  summarize,
} from "../src/overview";

const sample = (at: number, dispatched: number | null, memory: number | null = 1024): Sample => ({
  at,
  replicas: [{ url: "http://127.0.0.1:9464/metrics", up: dispatched !== null, error: null }],
  values: { dispatchedPerSecond: dispatched, storeMemoryBytes: memory },
  totals: { dispatched: dispatched === null ? null : 10 },
});

describe("the overview's history", () => {
  it("keeps only the samples within the window of the newest", () => {
    let history: Sample[] = [];
    for (const at of [0, 100, 200, 700]) history = appendSample(history, sample(at, 1), 600);
    expect(history.map((s) => s.at)).toEqual([200, 700]);
  });

  it("drops a sample repeated or out of order rather than keep two at one time", () => {
    const history = appendSample([sample(10, 1), sample(12, 2)], sample(12, 3), 600);
    expect(history.map((s) => [s.at, s.values.dispatchedPerSecond])).toEqual([
      [10, 1],
      [12, 3],
    ]);
  });

  it("reads a series with its gaps as null, never as zero", () => {
    const series = points([sample(0, 5), sample(2, null), sample(4, 0)], "dispatchedPerSecond");
    expect(series).toEqual([
      { at: 0, value: 5 },
      { at: 2, value: null },
      { at: 4, value: 0 },
    ]);
    expect(points([sample(0, 1)], "nosuch")).toEqual([{ at: 0, value: null }]);
  });
});

describe("a chart's text alternative", () => {
  it("says the current value and the min and max over the known ones", () => {
    const series = points([sample(0, 4), sample(2, null), sample(4, 1.5), sample(6, 9)], "dispatchedPerSecond");
    expect(summarize(series)).toEqual({ current: 9, min: 1.5, max: 9, known: 3 });
  });

  it("says there is no data now when the newest sample is a gap", () => {
    const series = points([sample(0, 4), sample(2, null)], "dispatchedPerSecond");
    expect(summarize(series).current).toBeNull();
    expect(summarize([])).toEqual({ current: null, min: null, max: null, known: 0 });
  });

  it("formats each unit", () => {
    expect(formatValue(null, "perSecond")).toBe("no data");
    expect(formatValue(0, "perSecond")).toBe("0/s");
    expect(formatValue(12.3456, "perSecond")).toBe("12.3/s");
    expect(formatValue(1234.5, "perSecond")).toBe("1,235/s");
    expect(formatValue(0.4321, "ms")).toBe("0.432 ms");
    expect(formatValue(7, "count")).toBe("7");
    expect(formatValue(512, "bytes")).toBe("512 B");
    expect(formatValue(1536, "bytes")).toBe("1.5 KiB");
    expect(formatValue(3 * 1024 * 1024, "bytes")).toBe("3 MiB");
  });

  it("names a series only once across the charts", () => {
    const keys = CHARTS.flatMap((c) => c.series.map((s) => s.key));
    expect(new Set(keys).size).toBe(keys.length);
  });
});

describe("a chart's drawing", () => {
  const frame = { width: 100, height: 50, start: 0, end: 10, top: 10 };

  it("rounds the axis up to 1, 2 or 5 times a power of ten", () => {
    expect(niceMax(0)).toBe(1);
    expect(niceMax(0.03)).toBeCloseTo(0.05);
    expect(niceMax(3)).toBe(5);
    expect(niceMax(7)).toBe(10);
    expect(niceMax(100)).toBe(100);
    expect(niceMax(101)).toBe(200);
  });

  it("rounds a bytes axis in KiB, MiB...", () => {
    expect(niceTop(2.03 * 1024 * 1024, "bytes")).toBe(5 * 1024 * 1024);
    expect(niceTop(1.2 * 1024 * 1024 * 1024, "bytes")).toBe(2 * 1024 ** 3);
    expect(niceTop(700, "bytes")).toBe(1000);
    expect(niceTop(2.03 * 1024 * 1024, "count")).toBe(5_000_000);
  });

  it("draws a line through the known points and breaks it at a gap", () => {
    const path = linePath(
      [
        { at: 0, value: 0 },
        { at: 2, value: 10 },
        { at: 4, value: null },
        { at: 6, value: 5 },
        { at: 8, value: 5 },
      ],
      frame,
    );
    expect(path).toBe("M0.0,50.0 L20.0,0.0 M60.0,25.0 L80.0,25.0");
  });

  it("shows a point alone between gaps, and nothing before the window", () => {
    const path = linePath(
      [
        { at: -4, value: 3 },
        { at: 2, value: null },
        { at: 4, value: 20 },
        { at: 6, value: null },
      ],
      frame,
    );
    // Clipped to the top of the frame, a dot-long segment.
    expect(path).toBe("M40.0,0.0 h1");
  });
});

// Topics and consumer groups: the topics the caller may read (GET /api/topics, live via
// /api/topics/events); one selected topic's retention and groups (/api/topics/{topic},
// live via .../events); its packets a page at a time from a cursor (.../packets).
import { useEffect, useState } from "preact/hooks";

import { call, errorMessage } from "../api";
import { useLive } from "../live";
import {
  BROWSE_SIZES,
  type BrowseHistory,
  type PacketPage,
  START,
  type TopicDetail,
  type TopicSummary,
  browsePath,
  current,
  custodyHref,
  enumLabel,
  formatBytes,
  isCursor,
  lagText,
  next,
  previous,
  retentionText,
  startAt,
  topicPath,
} from "../topics";

function selectedFromUrl(): string {
  return new URLSearchParams(window.location.search).get("topic") ?? "";
}

export function TopicsPage() {
  const [prefixInput, setPrefixInput] = useState("");
  const [prefix, setPrefix] = useState("");
  const [selected, setSelected] = useState(selectedFromUrl());
  const listing = useLive<{ topics: TopicSummary[]; truncated: boolean }>("/api/topics", { prefix });

  function choose(topic: string) {
    setSelected(topic);
    const url = topic ? `/topics?topic=${encodeURIComponent(topic)}` : "/topics";
    window.history.replaceState(null, "", url);
  }

  const topics = listing.data?.topics ?? [];
  return (
    <section aria-labelledby="topics-title">
      <h1 id="topics-title">Topics</h1>
      <form
        class="filters"
        role="search"
        onSubmit={(event) => {
          event.preventDefault();
          setPrefix(prefixInput.trim());
        }}
      >
        <label for="topics-prefix">Name starts with</label>
        <input
          id="topics-prefix"
          type="text"
          spellcheck={false}
          value={prefixInput}
          onInput={(e) => setPrefixInput((e.target as HTMLInputElement).value)}
        />
        <button type="submit">Filter</button>
      </form>
      <p class="status" aria-live="polite">
        Updates: {listing.status}. {topics.length} {topics.length === 1 ? "topic" : "topics"}
        {prefix ? ` starting with "${prefix}"` : ""}.
      </p>
      {listing.problem && (
        <p role="alert" class="error">
          {listing.problem}
        </p>
      )}
      <div class="scroll">
        <table>
          <caption class="sr-only">Topics you may read</caption>
          <thead>
            <tr>
              <th scope="col">Topic</th>
              <th scope="col">Packets</th>
              <th scope="col">Consumer groups</th>
              <th scope="col">Carcel entries</th>
              <th scope="col">Retention</th>
              <th scope="col">Newest cursor</th>
            </tr>
          </thead>
          <tbody>
            {topics.map((topic) => (
              <tr key={topic.name} data-topic={topic.name} class={topic.name === selected ? "selected" : undefined}>
                <th scope="row">
                  <button
                    type="button"
                    class="link dark"
                    aria-pressed={topic.name === selected}
                    onClick={() => choose(topic.name)}
                  >
                    {topic.name}
                  </button>
                </th>
                <td>{topic.packets}</td>
                <td>{topic.consumerGroups}</td>
                <td>{topic.carcelEntries}</td>
                <td>{retentionText(topic.retention)}</td>
                <td>
                  <code>{topic.lastCursor}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {listing.data && topics.length === 0 && <p>No topics you may read{prefix ? " with this prefix" : ""}.</p>}
      {listing.data?.truncated && <p>Only the first 1000 topics are shown: filter by prefix to see others.</p>}
      {selected && <TopicView key={selected} topic={selected} onClose={() => choose("")} />}
    </section>
  );
}

function TopicView({ topic, onClose }: { topic: string; onClose: () => void }) {
  const detail = useLive<TopicDetail>(topicPath(topic));
  const d = detail.data;
  return (
    <section aria-labelledby="topic-title" class="topic">
      <h2 id="topic-title">
        Topic <code>{topic}</code>{" "}
        <button type="button" class="link dark" onClick={onClose}>
          Close<span class="sr-only"> topic {topic}</span>
        </button>
      </h2>
      {detail.problem && (
        <p role="alert" class="error">
          {detail.problem}
        </p>
      )}
      {d && (
        <>
          <dl class="facts">
            <dt>Packets stored</dt>
            <dd>{d.packets}</dd>
            <dt>Retention</dt>
            <dd>{retentionText(d.retention)}</dd>
            {d.storedBytes !== "0" && (
              <>
                <dt>Bytes stored</dt>
                <dd>{formatBytes(Number(d.storedBytes))}</dd>
              </>
            )}
          </dl>
          <h3>Consumer groups</h3>
          {d.groups === null ? (
            <p class="muted">Not permitted: {d.groupsRefused}</p>
          ) : d.groups.length === 0 ? (
            <p>No consumer groups.</p>
          ) : (
            <div class="scroll">
              <table>
                <caption class="sr-only">Consumer groups of {topic}</caption>
                <thead>
                  <tr>
                    <th scope="col">Group</th>
                    <th scope="col">Outstanding leases</th>
                    <th scope="col">Consumers</th>
                    <th scope="col">Lag</th>
                    <th scope="col">Last delivered</th>
                    <th scope="col">Ack deadline</th>
                    <th scope="col">Max deliveries</th>
                  </tr>
                </thead>
                <tbody>
                  {d.groups.map((group) => (
                    <tr key={group.name} data-group={group.name}>
                      <th scope="row">{group.name}</th>
                      <td>{group.outstanding}</td>
                      <td>{group.consumers}</td>
                      <td>{lagText(group)}</td>
                      <td>
                        <code>{group.lastDeliveredCursor}</code>
                      </td>
                      <td>{group.ackDeadlineSeconds} s</td>
                      <td>{group.maxDeliveryAttempts}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
      <Browser topic={topic} />
    </section>
  );
}

function Browser({ topic }: { topic: string }) {
  const [history, setHistory] = useState<BrowseHistory>(START);
  const [size, setSize] = useState<number>(50);
  const [cursorInput, setCursorInput] = useState("");
  const [page, setPage] = useState<PacketPage | null>(null);
  const [problem, setProblem] = useState("");
  const [loading, setLoading] = useState(false);
  const [reload, setReload] = useState(0);

  useEffect(() => {
    let gone = false;
    setLoading(true);
    call<PacketPage>("GET", browsePath(topic, current(history), size))
      .then((answer) => {
        if (gone) return;
        setPage(answer);
        setProblem("");
      })
      .catch((exc: unknown) => {
        if (!gone) setProblem(errorMessage(exc));
      })
      .finally(() => {
        if (!gone) setLoading(false);
      });
    return () => {
      gone = true;
    };
  }, [topic, history, size, reload]);

  const cursorOk = isCursor(cursorInput);
  const rows = page?.packets ?? [];
  const from = current(history);
  return (
    <>
      <h3 id="browse-title">Packets</h3>
      <form
        class="filters"
        aria-labelledby="browse-title"
        onSubmit={(event) => {
          event.preventDefault();
          if (cursorOk) setHistory(startAt(cursorInput));
        }}
      >
        <label for="browse-after">After cursor</label>
        <input
          id="browse-after"
          type="text"
          spellcheck={false}
          placeholder="from the oldest"
          aria-invalid={!cursorOk}
          aria-describedby="browse-after-hint"
          value={cursorInput}
          onInput={(e) => setCursorInput((e.target as HTMLInputElement).value)}
        />
        <span id="browse-after-hint" class={cursorOk ? "muted" : "error"}>
          {cursorOk ? "like 1700000000000-0" : "not a cursor: like 1700000000000-0"}
        </span>
        <label for="browse-size">Per page</label>
        <select
          id="browse-size"
          value={String(size)}
          onChange={(e) => setSize(Number((e.target as HTMLSelectElement).value))}
        >
          {BROWSE_SIZES.map((n) => (
            <option key={n} value={String(n)}>
              {n}
            </option>
          ))}
        </select>
        <button type="submit" disabled={!cursorOk}>
          Show
        </button>
      </form>
      <div class="actions" role="group" aria-label="Pages of packets">
        <button type="button" onClick={() => setHistory(START)} disabled={from === "" && history.length === 1}>
          From the oldest
        </button>
        <button type="button" onClick={() => setHistory(previous(history))} disabled={history.length < 2}>
          Previous page
        </button>
        <button
          type="button"
          onClick={() => setHistory(next(history, page?.nextCursor ?? ""))}
          disabled={!page || rows.length === 0}
        >
          Next page
        </button>
        <button type="button" onClick={() => setReload((n) => n + 1)}>
          Read again
        </button>
      </div>
      <p class="status" aria-live="polite">
        {loading
          ? "Reading…"
          : `${rows.length} ${rows.length === 1 ? "packet" : "packets"} after ${from || "the start"}.`}
      </p>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {(page?.gaps ?? []).map((gap) => (
        <p key={gap.resumeAfterCursor} class="error">
          Skipped packets no longer stored ({enumLabel(gap.reason ?? "", "GAP_REASON_")}) up to{" "}
          <code>{gap.resumeAfterCursor}</code>.
        </p>
      ))}
      {rows.length > 0 && (
        <div class="scroll">
          <table>
            <caption class="sr-only">Packets of {topic} after {from || "the start"}</caption>
            <thead>
              <tr>
                <th scope="col">Cursor</th>
                <th scope="col">Tracking id</th>
                <th scope="col">Origin</th>
                <th scope="col">Speech act</th>
                <th scope="col">Contents</th>
                <th scope="col">Size</th>
                <th scope="col">Stored at</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={row.cursor} data-cursor={row.cursor}>
                  <th scope="row">
                    <code>{row.cursor}</code>
                  </th>
                  <td>
                    <a href={custodyHref(row.trackingId)}>
                      <code>{row.trackingId}</code>
                      <span class="sr-only"> (its chain of custody)</span>
                    </a>
                  </td>
                  <td>{row.origin}</td>
                  <td>{enumLabel(row.speechAct, "SPEECH_ACT_")}</td>
                  <td>{row.contents}</td>
                  <td>{formatBytes(row.contentBytes)}</td>
                  <td>
                    <time dateTime={row.storedAt}>{row.storedAt}</time>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

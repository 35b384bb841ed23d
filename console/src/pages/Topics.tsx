// Topics: the list, one topic's partitions and config, and a record browser that pages
// through a partition or follows the whole topic live.

import { useEffect, useState } from "preact/hooks";
import { enc, getJson, useAuth, type LogRecord, type RecordsDoc, type TopicDoc, type TopicSummary } from "../api";
import { DASH, bytes, iso, n, pretty } from "../format";
import { usePoll } from "../hooks";
import { streamEvents } from "../sse";

const SHOW_INTERNAL = "sluice.topics.internal";

/** Internal topics: the worker says so (newer workers), else by the names it reserves. */
const isInternal = (t: TopicSummary) => t.internal ?? (t.name.startsWith("__") || t.name.endsWith("-changelog"));

export function TopicsPage() {
  const [all, setAll] = useState(() => sessionStorage.getItem(SHOW_INTERNAL) === "1");
  // Always the whole list: the toggle filters on each topic's `internal`.
  const polled = usePoll(() => getJson<{ topics: TopicSummary[] }>("/topics?all=true"), 3000, []);
  const topics = polled.data?.topics.filter((t) => all || !isInternal(t));
  const hidden = polled.data ? polled.data.topics.length - (topics?.length ?? 0) : 0;
  return (
    <div data-testid="topics-page">
      <h1>Topics</h1>
      <label class="toggle">
        <input
          type="checkbox"
          checked={all}
          data-testid="topics-internal"
          onChange={(e) => {
            setAll(e.currentTarget.checked);
            sessionStorage.setItem(SHOW_INTERNAL, e.currentTarget.checked ? "1" : "0");
          }}
        />{" "}
        show internal topics{all ? "" : ` (${hidden} hidden)`}
      </label>
      {polled.error ? <p class="error">{polled.error}</p> : null}
      {!topics ? (
        <p class="muted">Loading…</p>
      ) : topics.length === 0 ? (
        <p class="muted">No topics.</p>
      ) : (
        <table class="data" data-testid="topics-table">
          <thead>
            <tr>
              <th>topic</th>
              <th class="num">partitions</th>
              <th class="num" title="log end minus log start over the partitions (transaction markers take offsets too)">
                offsets
              </th>
              <th class="num">bytes</th>
            </tr>
          </thead>
          <tbody>
            {topics.map((t) => (
              <tr data-testid="topic-row" data-name={t.name} data-internal={String(isInternal(t))} key={t.name}>
                <td class="mono">
                  <a href={`#/topics/${enc(t.name)}`}>{t.name}</a>
                  {isInternal(t) ? <span class="badge tag">internal</span> : null}
                  {t.name.endsWith(".dlq") ? <span class="badge tag">dead letters</span> : null}
                </td>
                <td class="num">{n(t.partitions)}</td>
                <td class="num" data-testid="topic-offsets">{n(t.offsets ?? t.records)}</td>
                <td class="num">{bytes(t.bytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

const PART_COLS: [string, string][] = [
  ["log_start_offset", "log start"],
  ["log_end_offset", "log end"],
  ["high_watermark", "high watermark"],
  ["last_stable_offset", "last stable"],
  ["segments", "segments"],
  ["size_bytes", "size"],
  ["local_log_start_offset", "local start"],
  ["remote_log_start_offset", "remote start"],
  ["remote_log_end_offset", "remote end"],
  ["remote_segments", "remote segments"],
  ["remote_size_bytes", "remote size"],
];

export function TopicPage({ name }: { name: string }) {
  const polled = usePoll(() => getJson<TopicDoc>(`/topics/${enc(name)}`), 3000, [name]);
  const t = polled.data;
  return (
    <div data-testid="topic-page" data-name={name}>
      <p class="crumbs">
        <a href="#/topics">Topics</a> / <span class="mono">{name}</span>
      </p>
      <h1 class="mono">
        {name} {t?.internal ? <span class="badge tag">internal</span> : null}
      </h1>
      {polled.error ? <p class="error">{polled.error}</p> : null}
      {!t ? (
        <p class="muted">Loading…</p>
      ) : (
        <>
          <section class="card">
            <h2>Partitions</h2>
            <div class="scroll">
              <table class="data" data-testid="partitions-table">
                <thead>
                  <tr>
                    <th class="num">partition</th>
                    {PART_COLS.map(([, label]) => (
                      <th class="num">{label}</th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {t.partitions.map((p) => (
                    <tr data-testid="partition-row">
                      <td class="num">{p.partition}</td>
                      {PART_COLS.map(([k]) => {
                        const v = p[k] as number | null | undefined;
                        return <td class="num">{k.endsWith("bytes") ? bytes(v) : n(v)}</td>;
                      })}
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </section>
          <RecordBrowser topic={name} info={t} />
          <section class="card">
            <h2>Config</h2>
            <table class="data config" data-testid="config-table">
              <tbody>
                {Object.entries(t.config).map(([k, v]) => {
                  const value = typeof v === "object" && v ? v.value : String(v);
                  const over = typeof v === "object" && v ? v.overridden : false;
                  return (
                    <tr class={over ? "overridden" : ""}>
                      <td class="mono">{k}</td>
                      <td class="mono">{value}</td>
                      <td class="muted">{over ? "set" : "default"}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </section>
        </>
      )}
    </div>
  );
}

interface Browse {
  partition: number;
  offset: number;
  limit: number;
}

function RecordBrowser({ topic, info }: { topic: string; info: TopicDoc }) {
  const { epoch } = useAuth();
  // Start on the first partition with records, at its newest records.
  const first = info.partitions.find((p) => p.last_stable_offset > p.log_start_offset) ?? info.partitions[0];
  const [partition, setPartition] = useState(first?.partition ?? 0);
  const [offset, setOffset] = useState("0");
  const [limit, setLimit] = useState("20");
  const [page, setPage] = useState<{ q: Browse; doc: RecordsDoc } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const read = async (q: Browse) => {
    setBusy(true);
    setError(null);
    try {
      const doc = await getJson<RecordsDoc>(
        `/topics/${enc(topic)}/records?partition=${q.partition}&offset=${q.offset}&limit=${q.limit}`,
      );
      setPage({ q, doc });
      setOffset(String(q.offset));
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const lim = () => Math.max(1, Math.min(10_000, parseInt(limit, 10) || 20));
  /** The last N records of the partition (fresh offsets), shown newest first. */
  const lastN = async (p = partition) => {
    try {
      const fresh = await getJson<TopicDoc>(`/topics/${enc(topic)}`);
      const pi = fresh.partitions.find((x) => x.partition === p);
      if (!pi) throw new Error(`topic ${topic} has no partition ${p}`);
      const start = Math.max(pi.log_start_offset, pi.last_stable_offset - lim());
      await read({ partition: p, offset: start, limit: lim() });
    } catch (e) {
      setError((e as Error).message);
    }
  };
  useEffect(() => {
    if (first) lastN(first.partition);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [topic, epoch]);

  const [order, setOrder] = useState<"newest" | "oldest">("newest");
  const [follow, setFollow] = useState(false);
  const [fromStart, setFromStart] = useState(false);
  const [group, setGroup] = useState("");
  const records = page ? (order === "newest" ? [...page.doc.records].reverse() : page.doc.records) : [];

  return (
    <section class="card" data-testid="record-browser">
      <h2>Records</h2>
      <form
        class="browse"
        onSubmit={(e) => {
          e.preventDefault();
          read({ partition, offset: Math.max(0, parseInt(offset, 10) || 0), limit: lim() });
        }}
      >
        <label>
          partition{" "}
          <select
            value={partition}
            data-testid="browse-partition"
            onChange={(e) => setPartition(parseInt(e.currentTarget.value, 10))}
          >
            {info.partitions.map((p) => (
              <option value={p.partition}>
                {p.partition} ({n(p.log_start_offset)}–{n(p.last_stable_offset)})
              </option>
            ))}
          </select>
        </label>
        <label>
          offset{" "}
          <input
            type="number"
            min={0}
            value={offset}
            data-testid="browse-offset"
            onInput={(e) => setOffset(e.currentTarget.value)}
          />
        </label>
        <label>
          limit{" "}
          <input
            type="number"
            min={1}
            max={10000}
            value={limit}
            data-testid="browse-limit"
            onInput={(e) => setLimit(e.currentTarget.value)}
          />
        </label>
        <button type="submit" disabled={busy || follow} data-testid="browse-read">
          Read from offset
        </button>
        <button type="button" disabled={busy || follow} onClick={() => lastN()} data-testid="browse-last">
          Last {lim()}
        </button>
        {page && page.doc.records.length > 0 ? (
          <button
            type="button"
            disabled={busy || follow}
            data-testid="browse-next"
            onClick={() => read({ ...page.q, offset: page.doc.next_offset })}
          >
            Next from {n(page.doc.next_offset)}
          </button>
        ) : null}
        <label>
          order{" "}
          <select value={order} onChange={(e) => setOrder(e.currentTarget.value as "newest" | "oldest")}>
            <option value="newest">newest first</option>
            <option value="oldest">oldest first</option>
          </select>
        </label>
        <label class="toggle" title="stream the topic's new records (every partition) as they are written">
          <input
            type="checkbox"
            checked={follow}
            data-testid="browse-follow"
            onChange={(e) => setFollow(e.currentTarget.checked)}
          />{" "}
          Follow
        </label>
        {follow ? null : (
          <>
            <label class="toggle" title="when following: start at the earliest records (without a group's committed offsets)">
              <input
                type="checkbox"
                checked={fromStart}
                data-testid="follow-from-start"
                onChange={(e) => setFromStart(e.currentTarget.checked)}
              />{" "}
              from the beginning
            </label>
            <label title="when following: read as a member of this consumer group (it commits what was shown)">
              as group{" "}
              <input
                value={group}
                placeholder="(none)"
                size={10}
                data-testid="follow-group"
                onInput={(e) => setGroup(e.currentTarget.value)}
              />
            </label>
          </>
        )}
      </form>
      {error ? (
        <p class="error" data-testid="browse-error">
          {error}
        </p>
      ) : null}
      {follow ? <Follower topic={topic} fromStart={fromStart} group={group.trim()} /> : null}
      {page && !follow ? (
        <p class="muted" data-testid="browse-summary">
          Partition {page.q.partition}: {page.doc.records.length} record(s) from offset {n(page.q.offset)}; next offset{" "}
          {n(page.doc.next_offset)}.
        </p>
      ) : null}
      {page && !follow && page.doc.records.length > 0 ? (
        <div class="scroll">
          <table class="data records" data-testid="records-table">
            <RecordsHead />
            <tbody>
              {records.map((r) => (
                <RecordRow r={r} key={`${r.partition}:${r.offset}`} />
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </section>
  );
}

function RecordsHead() {
  return (
    <thead>
      <tr>
        <th class="num">partition</th>
        <th class="num">offset</th>
        <th>timestamp</th>
        <th>key</th>
        <th>value</th>
        <th>headers</th>
      </tr>
    </thead>
  );
}

/** Rows a followed topic keeps on screen (newest on top; the counter counts them all). */
const MAX_FOLLOW_ROWS = 500;

type FollowState = "connecting" | "following" | "ended" | "failed" | "closed";

/** Streams `GET /topics/NAME/consume?follow=true` while mounted (unmounting stops it). */
function Follower({ topic, fromStart, group }: { topic: string; fromStart: boolean; group: string }) {
  const { epoch } = useAuth();
  const [view, setView] = useState<{ state: FollowState; rows: LogRecord[]; count: number; message: string | null }>({
    state: "connecting",
    rows: [],
    count: 0,
    message: null,
  });
  useEffect(() => {
    const ctl = new AbortController();
    let state: FollowState = "connecting";
    let message: string | null = null;
    let rows: LogRecord[] = [];
    let pending: LogRecord[] = [];
    let count = 0;
    let timer: ReturnType<typeof setTimeout> | null = null;
    // Records may come by the thousand: the table is redrawn at most every 150 ms.
    const flush = () => {
      timer = null;
      if (ctl.signal.aborted) return;
      if (pending.length) {
        rows = pending.reverse().concat(rows).slice(0, MAX_FOLLOW_ROWS);
        pending = [];
      }
      setView({ state, rows, count, message });
    };
    const schedule = () => {
      if (!timer) timer = setTimeout(flush, 150);
    };
    const q = new URLSearchParams({ follow: "true" });
    if (fromStart) q.set("from_beginning", "true");
    if (group) q.set("group", group);
    setView({ state, rows, count, message });
    streamEvents(
      `/topics/${enc(topic)}/consume?${q}`,
      {},
      ctl.signal,
      (ev) => {
        if (ev.event === "record") {
          try {
            pending.push(JSON.parse(ev.data) as LogRecord);
            if (pending.length > MAX_FOLLOW_ROWS) pending = pending.slice(-MAX_FOLLOW_ROWS);
            count++;
          } catch {
            message = `a record event that is not JSON: ${ev.data}`;
          }
        } else if (ev.event === "end") {
          state = "ended";
          message = ev.data;
        } else if (ev.event === "error") {
          state = "failed";
          message = ev.data;
        }
        schedule();
      },
      () => {
        state = "following";
        schedule();
      },
    )
      .then(() => {
        if (state === "following" || state === "connecting") {
          state = "closed";
          message = "the worker closed the stream";
        }
      })
      .catch((e) => {
        state = "failed";
        message = (e as Error).message;
      })
      .finally(() => {
        if (timer) clearTimeout(timer);
        flush();
      });
    return () => {
      ctl.abort();
      if (timer) clearTimeout(timer);
    };
  }, [topic, fromStart, group, epoch]);
  return (
    <div data-testid="follow" data-state={view.state}>
      <p class="muted">
        <span class={`badge push-${view.state === "following" ? "streaming" : view.state}`} data-testid="follow-state">
          {view.state}
        </span>{" "}
        <b data-testid="follow-count">{n(view.count)}</b> record(s) from{" "}
        {group ? `group ${group}'s committed offsets (else ` : ""}
        {fromStart ? "the beginning" : "the end"}
        {group ? ")" : ""}, every partition, newest on top
        {view.count > view.rows.length ? ` (the last ${n(view.rows.length)} shown)` : ""}.
      </p>
      {view.message ? (
        <pre class={view.state === "failed" ? "error" : "muted"} data-testid="follow-message">
          {view.message}
        </pre>
      ) : null}
      {view.rows.length > 0 ? (
        <div class="scroll">
          <table class="data records" data-testid="follow-table">
            <RecordsHead />
            <tbody>
              {view.rows.map((r) => (
                <RecordRow r={r} testid="follow-row" key={`${r.partition}:${r.offset}`} />
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </div>
  );
}

function RecordRow({ r, testid = "record-row" }: { r: LogRecord; testid?: string }) {
  const k = pretty(r.key);
  const v = pretty(r.value);
  return (
    <tr data-testid={testid} data-offset={r.offset} data-partition={r.partition}>
      <td class="num">{r.partition}</td>
      <td class="num">{n(r.offset)}</td>
      <td class="mono nowrap" title={String(r.timestamp)}>
        {iso(r.timestamp)}
      </td>
      <td class={r.key == null ? "muted" : ""}>
        <pre class="payload" data-testid="record-key">
          {k.text}
        </pre>
      </td>
      <td class={r.value == null ? "muted" : ""}>
        <pre class={`payload ${v.json ? "json" : ""}`} data-testid="record-value">
          {r.value == null ? "null (tombstone)" : v.text}
        </pre>
      </td>
      <td data-testid="record-headers">
        {r.headers === undefined ? (
          <span class="muted">{DASH}</span>
        ) : r.headers.length === 0 ? (
          <span class="muted">none</span>
        ) : (
          <dl class="headers">
            {r.headers.map((h) => (
              <div data-testid="record-header" data-key={h.key}>
                <dt class="mono">{h.key}</dt>
                <dd class="mono">{h.value == null ? <span class="muted">null</span> : h.value}</dd>
              </div>
            ))}
          </dl>
        )}
      </td>
    </tr>
  );
}

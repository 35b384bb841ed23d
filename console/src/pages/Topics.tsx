// Topics: the list, one topic's partitions and config, and a record browser.

import { useEffect, useState } from "preact/hooks";
import { enc, getJson, useAuth, type LogRecord, type RecordsDoc, type TopicDoc, type TopicSummary } from "../api";
import { DASH, bytes, iso, n, pretty } from "../format";
import { usePoll } from "../hooks";

const SHOW_INTERNAL = "sluice.topics.internal";

export function TopicsPage() {
  const [all, setAll] = useState(() => sessionStorage.getItem(SHOW_INTERNAL) === "1");
  const polled = usePoll(
    () => getJson<{ topics: TopicSummary[] }>(`/topics${all ? "?all=true" : ""}`),
    3000,
    [all],
  );
  const topics = polled.data?.topics;
  // Newer workers call the count `offsets` (end minus start: transaction markers count too).
  const countName = topics?.some((t) => t.offsets !== undefined) ? "offsets" : "records";
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
        show internal topics (<code>__*</code>)
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
              <th class="num" title="log end minus log start, over the partitions">
                {countName}
              </th>
              <th class="num">bytes</th>
            </tr>
          </thead>
          <tbody>
            {topics.map((t) => (
              <tr data-testid="topic-row" data-name={t.name} key={t.name}>
                <td class="mono">
                  <a href={`#/topics/${enc(t.name)}`}>{t.name}</a>
                  {t.name.endsWith(".dlq") ? <span class="badge tag">dead letters</span> : null}
                </td>
                <td class="num">{n(t.partitions)}</td>
                <td class="num">{n(t.offsets ?? t.records)}</td>
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
        <button type="submit" disabled={busy} data-testid="browse-read">
          Read from offset
        </button>
        <button type="button" disabled={busy} onClick={() => lastN()} data-testid="browse-last">
          Last {lim()}
        </button>
        {page && page.doc.records.length > 0 ? (
          <button
            type="button"
            disabled={busy}
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
      </form>
      {error ? (
        <p class="error" data-testid="browse-error">
          {error}
        </p>
      ) : null}
      {page ? (
        <p class="muted" data-testid="browse-summary">
          Partition {page.q.partition}: {page.doc.records.length} record(s) from offset {n(page.q.offset)}; next offset{" "}
          {n(page.doc.next_offset)}.
        </p>
      ) : null}
      {page && page.doc.records.length > 0 ? (
        <div class="scroll">
          <table class="data records" data-testid="records-table">
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

function RecordRow({ r }: { r: LogRecord }) {
  const k = pretty(r.key);
  const v = pretty(r.value);
  return (
    <tr data-testid="record-row" data-offset={r.offset}>
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

// SQL: statements and pull queries (POST /sql) as tables, push queries (EMIT CHANGES,
// POST /query) streamed into a table until stopped.

import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { ApiError, getJson, request, type QueryDoc, type SqlResult } from "../api";
import { cell, isNum, n, parseExact } from "../format";
import { usePoll } from "../hooks";
import { streamQuery } from "../sse";
import { columnsOf, isPush, terminateSql } from "../sqltext";

const SQL_KEY = "sluice.sql";
/** Rows a push query keeps on screen (the counter counts them all). */
const MAX_PUSH_ROWS = 1000;

function RowsTable(props: { rows: Record<string, unknown>[]; columns?: string[]; testid: string; rowTestid: string }) {
  const cols = props.columns ?? columnsOf(props.rows);
  // A column of numbers (nulls aside) is right-aligned, its header too.
  const numeric = cols.map((c) => {
    let any = false;
    for (const r of props.rows) {
      const v = r[c];
      if (v == null) continue;
      if (!isNum(v)) return false;
      any = true;
    }
    return any;
  });
  return (
    <table class="data sql-table" data-testid={props.testid}>
      <thead>
        <tr>
          {cols.map((c, i) => (
            <th class={numeric[i] ? "num" : ""}>{c}</th>
          ))}
        </tr>
      </thead>
      <tbody>
        {props.rows.map((r) => (
          <tr data-testid={props.rowTestid}>
            {cols.map((c, i) => {
              const v = r[c];
              return (
                <td class={`mono ${numeric[i] ? "num" : ""} ${v === null ? "muted" : ""}`}>
                  {v === null ? "null" : cell(v)}
                </td>
              );
            })}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

type PushState = "streaming" | "ended" | "stopped" | "failed" | "closed";

interface Push {
  sql: string;
  state: PushState;
  rows: Record<string, unknown>[];
  columns: string[];
  count: number;
  message: string | null;
}

export function SqlPage() {
  const [sql, setSql] = useState(() => sessionStorage.getItem(SQL_KEY) ?? "SHOW STREAMS;\nSHOW TABLES;\nSHOW QUERIES;");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [results, setResults] = useState<SqlResult[] | null>(null);
  const [push, setPush] = useState<Push | null>(null);
  const abort = useRef<AbortController | null>(null);
  /** Grows with every run (and on leaving the page): a run whose number is no longer current
   * (a stopped push query's last flush, a slow pull answer) must not touch the page. */
  const gen = useRef(0);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);

  useEffect(
    () => () => {
      gen.current++;
      abort.current?.abort();
    },
    [],
  );
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [push?.count]);

  const stop = () => {
    abort.current?.abort();
    abort.current = null;
  };

  const run = async () => {
    const text = sql.trim();
    if (!text) return;
    sessionStorage.setItem(SQL_KEY, sql);
    stop();
    const my = ++gen.current;
    setError(null);
    setResults(null);
    setPush(null);
    if (isPush(text)) {
      setBusy(false);
      return runPush(text, my);
    }
    setBusy(true);
    try {
      const res = await request("/sql", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sql: text }),
      });
      // Parsed exactly: a BIGINT past 2^53 shows as the worker sent it.
      const doc = parseExact(await res.text()) as { results: SqlResult[] };
      if (gen.current === my) setResults(doc.results);
    } catch (e) {
      if (gen.current === my) setError((e as Error).message);
    } finally {
      if (gen.current === my) setBusy(false);
    }
  };

  const runPush = async (text: string, my: number) => {
    const ctl = new AbortController();
    abort.current = ctl;
    // Rows arrive faster than the screen needs: they are flushed every 100 ms.
    const p: Push = { sql: text, state: "streaming", rows: [], columns: [], count: 0, message: null };
    let pending: Record<string, unknown>[] = [];
    let timer: ReturnType<typeof setTimeout> | null = null;
    // Each flush hands the table a copy of `p` (new arrays), so it renders the new rows.
    const flush = () => {
      timer = null;
      if (gen.current !== my) return; // superseded by another run, or the page was left
      if (pending.length) {
        columnsOf(pending, p.columns);
        p.rows = p.rows.concat(pending);
        if (p.rows.length > MAX_PUSH_ROWS) p.rows = p.rows.slice(-MAX_PUSH_ROWS);
        pending = [];
      }
      setPush({ ...p, columns: [...p.columns] });
    };
    const schedule = () => {
      if (!timer) timer = setTimeout(flush, 100);
    };
    setPush({ ...p });
    let final: { state: PushState; message: string | null } | null = null;
    try {
      await streamQuery(text, ctl.signal, (ev) => {
        if (ev.event === "row") {
          try {
            const row = parseExact(ev.data);
            pending.push(row && typeof row === "object" && !Array.isArray(row) && !isNum(row) ? (row as Record<string, unknown>) : { value: row });
          } catch {
            pending.push({ value: ev.data });
          }
          p.count++;
          schedule();
        } else if (ev.event === "columns") {
          // Newer workers name the columns first, in the query's order.
          try {
            const cols = JSON.parse(ev.data);
            if (Array.isArray(cols) && p.columns.length === 0) {
              p.columns = cols.map(String);
              schedule();
            }
          } catch {
            /* ignore: the rows' keys name the columns */
          }
        } else if (ev.event === "error") {
          final = { state: "failed", message: ev.data };
        } else if (ev.event === "end") {
          final = { state: "ended", message: ev.data };
        }
      });
      if (!final) final = { state: "closed", message: "the worker closed the stream" };
    } catch (e) {
      if ((e as Error).name === "AbortError" || ctl.signal.aborted) final = { state: "stopped", message: null };
      else final = { state: "failed", message: (e as Error).message };
    }
    if (timer) clearTimeout(timer);
    if (abort.current === ctl) abort.current = null;
    p.state = final.state;
    p.message = final.message;
    flush();
  };

  const streaming = push?.state === "streaming";
  return (
    <div data-testid="sql-page">
      <h1>SQL</h1>
      <div class="sql-layout">
        <div class="sql-main">
          <div class="sql-editor">
            <textarea
              class="mono"
              rows={8}
              spellcheck={false}
              value={sql}
              data-testid="sql-input"
              onInput={(e) => setSql(e.currentTarget.value)}
              onKeyDown={(e) => {
                if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
                  e.preventDefault();
                  run();
                }
              }}
            />
            <div class="sql-buttons">
              <button onClick={run} disabled={busy} data-testid="sql-run" title="Ctrl+Enter">
                Run
              </button>
              {streaming ? (
                <button class="danger" onClick={stop} data-testid="sql-stop">
                  Stop
                </button>
              ) : null}
              <span class="muted">
                Ctrl+Enter runs. A query with <code>EMIT CHANGES</code> streams until stopped.
              </span>
              <span class="spacer" />
              {["SHOW STREAMS;", "SHOW TABLES;", "SHOW QUERIES;"].map((s) => (
                <button class="link" onClick={() => setSql(s)}>
                  {s}
                </button>
              ))}
            </div>
          </div>
          {busy ? <p class="muted">Running…</p> : null}
          {error ? (
            <pre class="error error-box" data-testid="sql-error">
              {error}
            </pre>
          ) : null}
          {results ? (
            <div data-testid="sql-results">
              {results.length === 0 ? <p class="muted">No results.</p> : null}
              {results.map((r, i) => (
                <section class="card" data-testid="sql-result">
                  {"message" in r ? (
                    <p class="ok" data-testid="sql-message">
                      {r.message}
                    </p>
                  ) : r.rows.length === 0 ? (
                    <p class="muted" data-testid="sql-empty">
                      Result {i + 1}: no rows.
                    </p>
                  ) : (
                    <>
                      <p class="muted">
                        Result {i + 1}: {n(r.rows.length)} row(s)
                      </p>
                      <div class="scroll">
                        <RowsTable
                          rows={r.rows}
                          columns={r.columns ? columnsOf(r.rows, [...r.columns]) : undefined}
                          testid="sql-table"
                          rowTestid="sql-row"
                        />
                      </div>
                    </>
                  )}
                </section>
              ))}
            </div>
          ) : null}
          {push ? (
            <section class="card" data-testid="push" data-state={push.state}>
              <p>
                <span class={`badge push-${push.state}`} data-testid="push-state">
                  {push.state}
                </span>{" "}
                <b data-testid="push-count">{n(push.count)}</b> row(s)
                {push.count > push.rows.length ? <span class="muted"> (the last {n(push.rows.length)} shown)</span> : null}
              </p>
              {push.message ? (
                <pre class={push.state === "failed" ? "error" : "muted"} data-testid="push-message">
                  {push.message}
                </pre>
              ) : null}
              <div
                class="scroll push-rows"
                ref={scroller}
                onScroll={(e) => {
                  const el = e.currentTarget;
                  stick.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
                }}
              >
                <RowsTable rows={push.rows} columns={push.columns} testid="push-table" rowTestid="push-row" />
              </div>
            </section>
          ) : null}
        </div>
        <QueriesSide put={setSql} />
      </div>
    </div>
  );
}

/** The persistent queries (`GET /queries`), to put a statement or its TERMINATE in the editor. */
function QueriesSide({ put }: { put: (sql: string) => void }) {
  const polled = usePoll(
    () =>
      getJson<{ queries: QueryDoc[] }>("/queries").catch((e) => {
        // An older worker has no /queries: no sidebar.
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }),
    5000,
    [],
  );
  const qs = polled.data?.queries;
  if (!qs) return null;
  return (
    <aside class="sql-side card" data-testid="sql-queries">
      <h2>Persistent queries</h2>
      {qs.length === 0 ? <p class="muted">None.</p> : null}
      <ul>
        {qs.map((q) => {
          const state = q.status?.state ?? "not running";
          return (
            <li data-testid="sql-query" data-id={q.id} title={q.statement}>
              <div class="mono">{q.id}</div>
              <div>
                <span class={`badge state-${q.status?.state ?? "stopped"}`}>{state}</span>{" "}
                <span class="muted">→</span> <span class="mono">{q.sink}</span>
              </div>
              <button class="link" onClick={() => put(q.statement + ";")}>
                statement
              </button>
              <button class="link" onClick={() => put(terminateSql(q.id))} data-testid="sql-query-terminate">
                TERMINATE…
              </button>
            </li>
          );
        })}
      </ul>
    </aside>
  );
}

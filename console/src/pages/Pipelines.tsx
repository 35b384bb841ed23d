// Pipelines: state and tasks with live rates and charts, actions, offsets, persistent
// queries, broken files, and the deploy form (edit, validate, deploy).

import { useEffect, useRef, useState } from "preact/hooks";
import {
  ApiError,
  enc,
  getJson,
  request,
  type OffsetsDoc,
  type Pipeline,
  type PipelinesDoc,
  type QueryDoc,
  type Task,
  type ValidationDoc,
} from "../api";
import { DASH, ago, bytes, n, parseExact, rate } from "../format";
import { lastRate, rates, record } from "../history";
import { useNow, usePoll } from "../hooks";
import { Sparkline } from "../Sparkline";

const POLL_MS = 2000;

const key = (p: string, t: string, what: string) => `task:${p}\u0000${t}\u0000${what}`;
/** Persistent queries' series share the tasks' keys under a pipeline name no file can have. */
const QUERIES = "\u0000queries";

function remember(doc: PipelinesDoc, at: number) {
  for (const p of doc.pipelines) {
    for (const t of p.tasks) {
      record(key(p.name, t.name, "in"), at, t.records_in);
      record(key(p.name, t.name, "out"), at, t.records_out);
    }
  }
}

function rememberQueries(doc: QueryDoc[] | null, at: number) {
  for (const q of doc ?? []) {
    if (!q.status) continue;
    record(key(QUERIES, q.id, "in"), at, q.status.records_in);
    record(key(QUERIES, q.id, "out"), at, q.status.records_out);
  }
}

/** `GET /queries`, or null from a worker without it (404). */
async function loadQueries(): Promise<QueryDoc[] | null> {
  try {
    return (await getJson<{ queries: QueryDoc[] }>("/queries")).queries;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

interface Draft {
  name: string;
  toml: string;
  seq: number;
}

export function PipelinesPage() {
  const polled = usePoll(() => getJson<PipelinesDoc>("/pipelines"), POLL_MS, [], remember);
  const queries = usePoll(loadQueries, POLL_MS, [], rememberQueries);
  const now = useNow(1000);
  const [draft, setDraft] = useState<Draft | null>(null);
  const doc = polled.data;
  return (
    <div data-testid="pipelines-page">
      <h1>Pipelines</h1>
      {polled.error ? (
        <p class="error" data-testid="pipelines-error">
          {polled.error}
        </p>
      ) : null}
      {!doc ? (
        <p class="muted">Loading…</p>
      ) : doc.pipelines.length === 0 ? (
        <p class="muted" data-testid="no-pipelines">
          No pipeline is deployed.
        </p>
      ) : (
        doc.pipelines.map((p) => (
          <PipelineCard
            p={p}
            now={now}
            reload={polled.reload}
            onEdit={(name, toml) => setDraft({ name, toml, seq: Date.now() })}
            key={p.name}
          />
        ))
      )}
      {queries.data || queries.error ? (
        <QueriesCard queries={queries.data ?? []} error={queries.error} now={now} />
      ) : null}
      {doc && doc.broken_files.length > 0 ? (
        <section class="card broken" data-testid="broken-files">
          <h2>Files that failed to load</h2>
          {doc.broken_files.map((b) => (
            <div class="broken-file" data-testid="broken-file">
              <div class="mono">{b.file}</div>
              <pre class="error">{b.error}</pre>
            </div>
          ))}
        </section>
      ) : null}
      <DeployForm onDeployed={polled.reload} draft={draft} />
    </div>
  );
}

/** `source x` and `sink x` can be restarted one by one. */
const restartable = (task: string) => /^(source|sink) /.test(task);

function PipelineCard(props: {
  p: Pipeline;
  now: number;
  reload: () => void;
  onEdit: (name: string, toml: string) => void;
}) {
  const { p, now, reload } = props;
  const [busy, setBusy] = useState<string | null>(null);
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  /** Grows when the offsets may have moved (a reset, a restart): the offsets view reloads. */
  const [moved, setMoved] = useState(0);
  const base = `/pipelines/${enc(p.name)}`;
  const run = async (label: string, fn: () => Promise<string | void>) => {
    setBusy(label);
    setMessage(null);
    try {
      const text = await fn();
      setMessage({ ok: true, text: text ?? `${label}: done` });
    } catch (e) {
      setMessage({ ok: false, text: `${label}: ${(e as Error).message}` });
    } finally {
      setBusy(null);
      setMoved((m) => m + 1);
      reload();
    }
  };
  const act = (action: string) => {
    if (action === "delete" && !confirm(`Stop pipeline ${p.name} and remove its file?`)) return;
    run(action, async () => {
      await request(base + (action === "delete" ? "" : `/${action}`), {
        method: action === "delete" ? "DELETE" : "POST",
      });
    });
  };
  const restartTask = (task: string) =>
    run(`restart ${task}`, async () => {
      await request(`${base}/tasks/${enc(task)}/restart`, { method: "POST" });
    });
  const resetOffsets = () => {
    if (
      !confirm(
        `Forget the committed positions of ${p.name}'s sources and sinks? Resumed, its sources read their input from the start.`,
      )
    )
      return;
    run("reset offsets", async () => {
      const doc = (await (await request(`${base}/offsets`, { method: "DELETE" })).json()) as { message?: string };
      return doc.message ?? "reset offsets: done";
    });
  };
  const edit = () =>
    run("edit", async () => {
      const toml = await (await request(`${base}/config`)).text();
      props.onEdit(p.name, toml);
      return `Loaded ${p.name}'s file into the Deploy form below.`;
    });
  const paused = p.state === "paused";
  return (
    <section class="card" data-testid="pipeline" data-name={p.name} data-state={p.state}>
      <div class="card-head">
        <h2 data-testid="pipeline-name">{p.name}</h2>
        <span class={`badge state-${p.state}`} data-testid="pipeline-state">
          {p.state}
        </span>
        <span class="mono muted file" title="pipeline file">
          {p.file}
        </span>
        <span class="spacer" />
        {paused ? (
          <button disabled={!!busy} onClick={() => act("resume")} data-testid="pipeline-resume">
            Resume
          </button>
        ) : (
          <button disabled={!!busy} onClick={() => act("pause")} data-testid="pipeline-pause">
            Pause
          </button>
        )}
        <button disabled={!!busy} onClick={() => act("restart")} data-testid="pipeline-restart">
          Restart
        </button>
        {paused ? (
          <button
            class="danger"
            disabled={!!busy}
            onClick={resetOffsets}
            data-testid="pipeline-reset-offsets"
            title="DELETE /pipelines/NAME/offsets (only while paused)"
          >
            Reset offsets
          </button>
        ) : null}
        <button disabled={!!busy} onClick={edit} data-testid="pipeline-edit" title="load its file into the Deploy form">
          Edit
        </button>
        <button class="danger" disabled={!!busy} onClick={() => act("delete")} data-testid="pipeline-delete">
          Delete
        </button>
      </div>
      {message ? (
        <p class={message.ok ? "ok" : "error"} data-testid="pipeline-action-message">
          {message.text}
        </p>
      ) : null}
      <div class="scroll">
        <table class="data tasks">
          <thead>
            <tr>
              <th>task</th>
              <th>state</th>
              <CounterHeads />
              <th class="num" title="how far a source is behind its input">lag</th>
              <CommitHeads />
              <th />
            </tr>
          </thead>
          <tbody>
            {p.tasks.map((t) => (
              <TaskRows
                p={p.name}
                t={t}
                now={now}
                key={t.name}
                restart={restartable(t.name) ? () => restartTask(t.name) : undefined}
                restartTitle={paused ? "the pipeline is paused" : undefined}
                busy={!!busy || paused}
              />
            ))}
          </tbody>
        </table>
      </div>
      <OffsetsView pipeline={p.name} moved={moved} />
    </section>
  );
}

const COLS = 15;

function CounterHeads() {
  return (
    <>
      <th class="num">records in</th>
      <th class="num">records out</th>
      <th class="num" title="records/s, from polling every 2 s">in/s</th>
      <th class="num">out/s</th>
      <th title="records/s in (blue) and out (green), last 5 min">rate</th>
      <th class="num">dead letters</th>
      <th class="num">dropped</th>
      <th class="num">restarts</th>
    </>
  );
}

function CommitHeads() {
  return (
    <>
      <th class="num" title="epochs committed (exactly-once)">commits</th>
      <th class="num">last commit</th>
      <th class="num">avg commit</th>
    </>
  );
}

/** Records in and out, their rates and chart, dead letters, dropped, restarts. */
function Counters({ t, p, now, dlq }: { t: Task; p: string; now: number; dlq?: string }) {
  const kin = key(p, t.name, "in");
  const kout = key(p, t.name, "out");
  return (
    <>
      <td class="num" data-testid="task-records-in">{n(t.records_in)}</td>
      <td class="num" data-testid="task-records-out">{n(t.records_out)}</td>
      <td class="num" data-testid="task-rate-in">{rate(lastRate(kin))}</td>
      <td class="num" data-testid="task-rate-out">{rate(lastRate(kout))}</td>
      <td>
        <Sparkline
          now={now}
          testid="task-chart"
          unit="/s"
          lines={[
            { points: rates(kin), className: "line-in", label: "in" },
            { points: rates(kout), className: "line-out", label: "out" },
          ]}
        />
      </td>
      <td class={`num ${t.dead_letters > 0 ? "warn" : ""}`} data-testid="task-dead-letters">
        {t.dead_letters > 0 && dlq ? (
          <a href={`#/topics/${enc(dlq)}`} title={`read ${dlq}`}>
            {n(t.dead_letters)}
          </a>
        ) : (
          n(t.dead_letters)
        )}
      </td>
      <td class="num">{n(t.dropped)}</td>
      <td class={`num ${t.restarts > 0 ? "warn" : ""}`}>{n(t.restarts)}</td>
    </>
  );
}

/** The exactly-once epoch status: commits, the last one's age, the average commit time. */
function Commits({ t, now }: { t: Task; now: number }) {
  return (
    <>
      <td class="num" data-testid="task-commits">{n(t.commits)}</td>
      <td class="num" data-testid="task-last-commit">
        {t.last_commit_ms === undefined ? DASH : t.last_commit_ms === null ? "none" : ago(t.last_commit_ms, now)}
      </td>
      <td class="num" data-testid="task-commit-avg">
        {t.commit_ms_avg == null ? DASH : `${rate(t.commit_ms_avg)} ms`}
      </td>
    </>
  );
}

function TaskRows(props: {
  p: string;
  t: Task;
  now: number;
  restart?: () => void;
  restartTitle?: string;
  busy: boolean;
}) {
  const { p, t, now } = props;
  return (
    <>
      <tr data-testid="task" data-name={t.name} data-state={t.state}>
        <td class="mono">{t.name}</td>
        <td>
          <span class={`badge state-${t.state}`} data-testid="task-state">
            {t.state}
          </span>
        </td>
        {/* A pipeline's sources and sinks write their dead letters to `<pipeline>.dlq`. */}
        <Counters t={t} p={p} now={now} dlq={restartable(t.name) ? `${p}.dlq` : undefined} />
        <td class="num" title={t.lag_bytes == null ? "not known for this task" : `${t.lag_bytes} bytes`}>
          {t.lag_bytes == null ? DASH : bytes(t.lag_bytes)}
        </td>
        <Commits t={t} now={now} />
        <td>
          {props.restart ? (
            <button
              class="small"
              disabled={props.busy}
              onClick={props.restart}
              title={props.restartTitle ?? `restart ${t.name} (it resumes from its committed position)`}
              data-testid="task-restart"
            >
              Restart
            </button>
          ) : null}
        </td>
      </tr>
      {t.last_error ? (
        <tr class="task-error">
          <td colSpan={COLS}>
            <pre class="error" data-testid="task-error">
              {t.last_error}
            </pre>
          </td>
        </tr>
      ) : null}
    </>
  );
}

/** A pipeline's committed positions, read when opened (and again on Refresh or a change). */
function OffsetsView({ pipeline, moved }: { pipeline: string; moved: number }) {
  const [open, setOpen] = useState(false);
  const [doc, setDoc] = useState<OffsetsDoc | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [kick, setKick] = useState(0);
  useEffect(() => {
    if (!open) return;
    let live = true;
    setError(null);
    request(`/pipelines/${enc(pipeline)}/offsets`)
      .then((r) => r.text())
      .then((t) => live && setDoc(parseExact(t) as OffsetsDoc))
      .catch((e) => live && setError((e as Error).message));
    return () => {
      live = false;
    };
  }, [open, kick, moved, pipeline]);
  return (
    <details
      class="offsets"
      data-testid="pipeline-offsets"
      onToggle={(e) => setOpen((e.currentTarget as HTMLDetailsElement).open)}
    >
      <summary>Offsets</summary>
      <p class="muted">
        Committed positions of the sources (as each stores it) and next offsets of the sinks.{" "}
        <button class="link" onClick={() => setKick((k) => k + 1)} data-testid="offsets-refresh">
          Refresh
        </button>
      </p>
      {error ? (
        <p class="error" data-testid="offsets-error">
          {error}
        </p>
      ) : null}
      {doc ? (
        doc.offsets.length === 0 ? (
          <p class="muted" data-testid="offsets-empty">
            No committed positions.
          </p>
        ) : (
          <table class="data offsets-table" data-testid="offsets-table">
            <thead>
              <tr>
                <th>task</th>
                <th class="num">partition</th>
                <th>offset</th>
              </tr>
            </thead>
            <tbody>
              {doc.offsets.map((o) => (
                <tr data-testid="offset-row" data-task={o.task} data-partition={o.partition ?? ""}>
                  <td class="mono nowrap">{o.task}</td>
                  <td class="num">{o.partition == null ? DASH : o.partition}</td>
                  <td>
                    <pre class="mono" data-testid="offset-value">
                      {JSON.stringify(o.offset)}
                    </pre>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )
      ) : null}
    </details>
  );
}

function QueriesCard({ queries, error, now }: { queries: QueryDoc[]; error: string | null; now: number }) {
  return (
    <section class="card" data-testid="queries">
      <h2>Persistent queries</h2>
      {error ? (
        <p class="error" data-testid="queries-error">
          {error}
        </p>
      ) : null}
      {queries.length === 0 ? (
        <p class="muted" data-testid="no-queries">
          No persistent queries.
        </p>
      ) : (
        <div class="scroll">
          <table class="data tasks">
            <thead>
              <tr>
                <th>query</th>
                <th>sink</th>
                <th>state</th>
                <CounterHeads />
                <CommitHeads />
              </tr>
            </thead>
            <tbody>
              {queries.map((q) => (
                <QueryRows q={q} now={now} key={q.id} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function QueryRows({ q, now }: { q: QueryDoc; now: number }) {
  const t = q.status;
  const state = t?.state ?? (q.failed_to_start ? "failed" : "stopped");
  const problem = q.failed_to_start ? `failed to start: ${q.failed_to_start}` : t?.last_error;
  const cols = 14;
  return (
    <>
      <tr data-testid="query" data-id={q.id} data-state={state}>
        <td class="mono" data-testid="query-id">
          {q.id}
        </td>
        <td class="mono" data-testid="query-sink">
          {q.sink}
        </td>
        <td>
          <span class={`badge state-${state}`} data-testid="query-state">
            {t ? state : "not running"}
          </span>
        </td>
        {t ? (
          <>
            <Counters t={{ ...t, name: q.id }} p={QUERIES} now={now} />
            <Commits t={t} now={now} />
          </>
        ) : (
          <td colSpan={cols - 3} class="muted">
            no status: the query is not running
          </td>
        )}
      </tr>
      {problem ? (
        <tr class="task-error">
          <td colSpan={cols}>
            <pre class="error" data-testid="query-error">
              {problem}
            </pre>
          </td>
        </tr>
      ) : null}
      <tr class="query-sql">
        <td colSpan={cols}>
          <details data-testid="query-details" data-id={q.id}>
            <summary>statement</summary>
            <pre class="mono" data-testid="query-statement">
              {q.statement}
            </pre>
          </details>
        </td>
      </tr>
    </>
  );
}

const EXAMPLE = `# name = "my-pipeline"   (optional: the name above wins)
[[topics]]
name = "events"
partitions = 1

[[sources]]
name = "events-http"
topic = "events"
http = { key-field = "id" }
`;

type Outcome =
  | { kind: "deployed"; text: string }
  | { kind: "valid"; doc: ValidationDoc }
  | { kind: "error"; what: "deploy" | "validate"; text: string; status?: number };

const plural = (k: number, one: string) => `${k} ${one}${k === 1 ? "" : "s"}`;

function DeployForm({ onDeployed, draft }: { onDeployed: () => void; draft: Draft | null }) {
  const [name, setName] = useState("");
  const [toml, setToml] = useState("");
  const [busy, setBusy] = useState<null | "deploy" | "validate">(null);
  const [result, setResult] = useState<Outcome | null>(null);
  const [editing, setEditing] = useState<string | null>(null);
  const section = useRef<HTMLElement>(null);
  useEffect(() => {
    if (!draft) return;
    setName(draft.name);
    setToml(draft.toml);
    setEditing(draft.name);
    setResult(null);
    section.current?.scrollIntoView({ block: "start" });
  }, [draft]);

  const call = async (what: "deploy" | "validate") => {
    setBusy(what);
    setResult(null);
    const n = name.trim();
    try {
      const res = await request(
        what === "deploy" ? `/pipelines/${enc(n)}` : `/pipelines/validate${n ? `?name=${enc(n)}` : ""}`,
        { method: what === "deploy" ? "PUT" : "POST", headers: { "Content-Type": "application/toml" }, body: toml },
      );
      if (what === "validate") {
        setResult({ kind: "valid", doc: (await res.json()) as ValidationDoc });
      } else {
        const doc = (await res.json().catch(() => ({}))) as { message?: string };
        setResult({ kind: "deployed", text: doc.message ?? "Deployed." });
        onDeployed();
      }
    } catch (err) {
      const status = err instanceof ApiError ? err.status : undefined;
      setResult({ kind: "error", what, text: (err as Error).message, status });
    } finally {
      setBusy(null);
    }
  };
  return (
    <section class="card deploy" ref={section}>
      <h2>Deploy</h2>
      <p class="muted">
        PUT a pipeline file: it is written to the worker's pipelines folder as <code>&lt;name&gt;.toml</code> and
        deployed (a redeploy replaces the running version). Validate checks it as a deploy would, without deploying.
        {editing ? (
          <>
            {" "}
            Editing <b data-testid="deploy-editing">{editing}</b>: Deploy redeploys it.
          </>
        ) : null}
      </p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          call("deploy");
        }}
        data-testid="deploy-form"
      >
        <label>
          name{" "}
          <input
            required
            pattern="[A-Za-z0-9_\-]+"
            title="letters, digits, - and _"
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
            data-testid="deploy-name"
          />
        </label>
        <textarea
          class="mono"
          rows={14}
          spellcheck={false}
          placeholder={EXAMPLE}
          value={toml}
          onInput={(e) => setToml(e.currentTarget.value)}
          data-testid="deploy-toml"
        />
        <div class="buttons">
          <button type="submit" disabled={!!busy || !name.trim()} data-testid="deploy-submit">
            {busy === "deploy" ? "Deploying…" : "Deploy"}
          </button>
          <button type="button" disabled={!!busy || !toml.trim()} onClick={() => call("validate")} data-testid="deploy-validate">
            {busy === "validate" ? "Validating…" : "Validate"}
          </button>
        </div>
      </form>
      {!result ? null : result.kind === "deployed" ? (
        <p class="ok" data-testid="deploy-result">
          {result.text}
        </p>
      ) : result.kind === "valid" ? (
        <p
          class="ok"
          data-testid="validate-result"
          data-name={result.doc.name}
          data-topics={result.doc.topics}
          data-sources={result.doc.sources}
          data-sinks={result.doc.sinks}
          data-statements={result.doc.statements}
        >
          Valid: pipeline <b>{result.doc.name}</b> would deploy {plural(result.doc.topics, "topic")},{" "}
          {plural(result.doc.sources, "source")}, {plural(result.doc.sinks, "sink")} and{" "}
          {plural(result.doc.statements, "SQL statement")}.
        </p>
      ) : (
        <div class="error-box" data-testid={result.what === "deploy" ? "deploy-error" : "validate-error"}>
          <div class="muted">
            {result.what === "validate" ? "Not valid" : "Not deployed"}
            {result.status ? ` (HTTP ${result.status})` : ""}
          </div>
          <pre class="error">{result.text}</pre>
        </div>
      )}
    </section>
  );
}

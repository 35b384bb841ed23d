// Pipelines: state and tasks with live rates and charts, actions, broken files, deploy.

import { useState } from "preact/hooks";
import { ApiError, enc, getJson, request, type Pipeline, type PipelinesDoc, type Task } from "../api";
import { DASH, ago, bytes, n, rate } from "../format";
import { lastRate, rates, record } from "../history";
import { useNow, usePoll } from "../hooks";
import { Sparkline } from "../Sparkline";

const POLL_MS = 2000;

const key = (p: string, t: string, what: string) => `task:${p}\u0000${t}\u0000${what}`;

function remember(doc: PipelinesDoc, at: number) {
  for (const p of doc.pipelines) {
    for (const t of p.tasks) {
      record(key(p.name, t.name, "in"), at, t.records_in);
      record(key(p.name, t.name, "out"), at, t.records_out);
    }
  }
}

export function PipelinesPage() {
  const polled = usePoll(() => getJson<PipelinesDoc>("/pipelines"), POLL_MS, [], remember);
  const now = useNow(1000);
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
        doc.pipelines.map((p) => <PipelineCard p={p} now={now} reload={polled.reload} key={p.name} />)
      )}
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
      <DeployForm onDeployed={polled.reload} />
    </div>
  );
}

function PipelineCard({ p, now, reload }: { p: Pipeline; now: number; reload: () => void }) {
  const [busy, setBusy] = useState<string | null>(null);
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const act = async (action: string) => {
    if (action === "delete" && !confirm(`Stop pipeline ${p.name} and remove its file?`)) return;
    setBusy(action);
    setMessage(null);
    try {
      const path = `/pipelines/${enc(p.name)}` + (action === "delete" ? "" : `/${action}`);
      await request(path, { method: action === "delete" ? "DELETE" : "POST" });
      setMessage({ ok: true, text: `${action}: done` });
    } catch (e) {
      setMessage({ ok: false, text: (e as Error).message });
    } finally {
      setBusy(null);
      reload();
    }
  };
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
        {p.state === "paused" ? (
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
            <th class="num">records in</th>
            <th class="num">records out</th>
            <th class="num" title="records/s, from polling every 2 s">in/s</th>
            <th class="num">out/s</th>
            <th title="records/s in (blue) and out (green), last 5 min">rate</th>
            <th class="num">dead letters</th>
            <th class="num">dropped</th>
            <th class="num">restarts</th>
            <th class="num" title="how far a source is behind its input">lag</th>
            <th class="num" title="epochs committed (exactly-once)">commits</th>
            <th class="num">last commit</th>
            <th class="num">avg commit</th>
          </tr>
        </thead>
        <tbody>
          {p.tasks.map((t) => (
            <TaskRows p={p.name} t={t} now={now} key={t.name} />
          ))}
        </tbody>
      </table>
      </div>
    </section>
  );
}

function TaskRows({ p, t, now }: { p: string; t: Task; now: number }) {
  const kin = key(p, t.name, "in");
  const kout = key(p, t.name, "out");
  return (
    <>
      <tr data-testid="task" data-name={t.name} data-state={t.state}>
        <td class="mono">{t.name}</td>
        <td>
          <span class={`badge state-${t.state}`} data-testid="task-state">
            {t.state}
          </span>
        </td>
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
          {t.dead_letters > 0 && /^(source|sink) /.test(t.name) ? (
            // A pipeline's sources and sinks write their dead letters to `<pipeline>.dlq`.
            <a href={`#/topics/${enc(`${p}.dlq`)}`} title={`read ${p}.dlq`}>
              {n(t.dead_letters)}
            </a>
          ) : (
            n(t.dead_letters)
          )}
        </td>
        <td class="num">{n(t.dropped)}</td>
        <td class={`num ${t.restarts > 0 ? "warn" : ""}`}>{n(t.restarts)}</td>
        <td class="num" title={t.lag_bytes == null ? "not known for this task" : `${t.lag_bytes} bytes`}>
          {t.lag_bytes == null ? DASH : bytes(t.lag_bytes)}
        </td>
        <td class="num" data-testid="task-commits">{n(t.commits)}</td>
        <td class="num" data-testid="task-last-commit">
          {t.last_commit_ms === undefined ? DASH : t.last_commit_ms === null ? "none" : ago(t.last_commit_ms, now)}
        </td>
        <td class="num">{t.commit_ms_avg == null ? DASH : `${rate(t.commit_ms_avg)} ms`}</td>
      </tr>
      {t.last_error ? (
        <tr class="task-error">
          <td colSpan={14}>
            <pre class="error" data-testid="task-error">
              {t.last_error}
            </pre>
          </td>
        </tr>
      ) : null}
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

function DeployForm({ onDeployed }: { onDeployed: () => void }) {
  const [name, setName] = useState("");
  const [toml, setToml] = useState("");
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string; status?: number } | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setResult(null);
    try {
      const res = await request(`/pipelines/${enc(name.trim())}`, {
        method: "PUT",
        headers: { "Content-Type": "application/toml" },
        body: toml,
      });
      const doc = (await res.json().catch(() => ({}))) as { message?: string };
      setResult({ ok: true, text: doc.message ?? "Deployed." });
      onDeployed();
    } catch (err) {
      const status = err instanceof ApiError ? err.status : undefined;
      setResult({ ok: false, text: (err as Error).message, status });
    } finally {
      setBusy(false);
    }
  };
  return (
    <section class="card deploy">
      <h2>Deploy</h2>
      <p class="muted">
        PUT a pipeline file: it is written to the worker's pipelines folder as <code>&lt;name&gt;.toml</code> and
        deployed (a redeploy replaces the running version).
      </p>
      <form onSubmit={submit} data-testid="deploy-form">
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
        <div>
          <button type="submit" disabled={busy || !name.trim()} data-testid="deploy-submit">
            {busy ? "Deploying…" : "Deploy"}
          </button>
        </div>
      </form>
      {result ? (
        result.ok ? (
          <p class="ok" data-testid="deploy-result">
            {result.text}
          </p>
        ) : (
          <div class="error-box" data-testid="deploy-error">
            {result.status ? <div class="muted">HTTP {result.status}</div> : null}
            <pre class="error">{result.text}</pre>
          </div>
        )
      ) : null}
    </section>
  );
}

// The Sluice console: a nav bar, hash routes, and the token prompt.

import { render } from "preact";
import { useState } from "preact/hooks";
import { auth, getJson, tokenProblem, useAuth } from "./api";
import { usePoll, useRoute } from "./hooks";
import { PipelinesPage } from "./pages/Pipelines";
import { TopicPage, TopicsPage } from "./pages/Topics";
import { GroupPage, GroupsPage } from "./pages/Groups";
import { SqlPage } from "./pages/Sql";
import "./style.css";

const NAV = [
  ["pipelines", "Pipelines"],
  ["topics", "Topics"],
  ["groups", "Consumer groups"],
  ["sql", "SQL"],
] as const;

function Health() {
  // /health needs no token.
  const h = usePoll(() => getJson<{ status: string; data_loss?: unknown[] }>("/health"), 5000, []);
  const status = h.error ? "unreachable" : (h.data?.status ?? "…");
  return (
    <span class={`health health-${status}`} data-testid="health" title={h.error ?? "GET /health"}>
      worker: {status}
    </span>
  );
}

function TokenPrompt() {
  const [value, setValue] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  return (
    <div class="modal-back">
      <form
        class="modal"
        data-testid="token-form"
        onSubmit={(e) => {
          e.preventDefault();
          const token = value.trim();
          if (!token) return;
          // A token the browser cannot put in a header would break every request: refuse it here.
          const p = tokenProblem(token);
          setProblem(p);
          if (!p) auth.set(token);
        }}
      >
        <h2>API token</h2>
        <p>
          The worker answered 401: it runs with <code>--token</code>. Enter the token; it is kept
          for this browser tab only (sessionStorage).
        </p>
        {auth.refused ? (
          <p class="error" data-testid="token-refused">
            The worker refused the token that was sent.
          </p>
        ) : null}
        {auth.dropped && !problem ? (
          <p class="error" data-testid="token-dropped">
            {auth.dropped}
          </p>
        ) : null}
        {problem ? (
          <p class="error" data-testid="token-problem">
            {problem}
          </p>
        ) : null}
        <input
          type="password"
          autoFocus
          autoComplete="off"
          placeholder="bearer token"
          data-testid="token-input"
          value={value}
          onInput={(e) => {
            setValue(e.currentTarget.value);
            setProblem(null);
          }}
        />
        <button type="submit" data-testid="token-submit">
          Use token
        </button>
      </form>
    </div>
  );
}

function App() {
  const route = useRoute();
  const { needed } = useAuth();
  const [page, arg] = route;
  let body;
  switch (page ?? "pipelines") {
    case "pipelines":
      body = <PipelinesPage />;
      break;
    case "topics":
      body = arg ? <TopicPage name={arg} key={arg} /> : <TopicsPage />;
      break;
    case "groups":
      body = arg ? <GroupPage group={arg} key={arg} /> : <GroupsPage />;
      break;
    case "sql":
      body = <SqlPage />;
      break;
    default:
      body = (
        <p class="error">
          No page <code>{route.join("/")}</code>. <a href="#/pipelines">Pipelines</a>
        </p>
      );
  }
  const current = page ?? "pipelines";
  return (
    <>
      <header class="nav">
        <a class="brand" href="#/pipelines">
          Sluice
        </a>
        <nav>
          {NAV.map(([id, label]) => (
            <a href={`#/${id}`} class={current === id ? "active" : ""} data-testid={`nav-${id}`}>
              {label}
            </a>
          ))}
        </nav>
        <span class="spacer" />
        <Health />
        {auth.token() ? (
          <button class="link" onClick={() => auth.set(null)} title="Forget the API token">
            forget token
          </button>
        ) : null}
      </header>
      <main>{body}</main>
      {needed ? <TokenPrompt /> : null}
    </>
  );
}

render(<App />, document.getElementById("app")!);

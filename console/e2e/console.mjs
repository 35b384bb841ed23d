#!/usr/bin/env node
// Browser test of the Sluice console against a running worker that serves it (or a
// `vite preview` proxying to one). Headless Chromium drives the pages as a person would;
// what they show is compared with what the API answers.
//
// Environment:
//   SLUICE_URL           the console's URL (required), e.g. http://127.0.0.1:7070/
//   SLUICE_TOKEN         the API token, when the worker runs with --token (typed into the prompt)
//   SLUICE_DEPLOY_TOML   a pipeline file to deploy from the Deploy form...
//   SLUICE_DEPLOY_NAME   ...under this name (both needed for the deploy check)
//   SLUICE_RESET_OFFSETS  1: while SLUICE_DEPLOY_NAME is paused, also reset its offsets with the
//                        button (it re-reads its input from the start when resumed)
//   SLUICE_PIPELINE      the pipeline whose Edit, Validate, Offsets and a task's Restart are checked
//                        (default SLUICE_DEPLOY_NAME, else the first one the worker lists)
//   SLUICE_BROWSE_TOPIC  a topic whose records the record browser must show (with headers)
//   SLUICE_FOLLOW_TOPIC  a topic to Follow in the record browser: once it streams, one record is
//                        produced to it (key "e2e", a ride-shaped JSON value, header e2e-follow)
//                        and must show on top; turning Follow off (and leaving the page) must end
//                        the stream on the worker
//   SLUICE_PUSH_SQL      a push query (EMIT CHANGES) to stream on the SQL page...
//   SLUICE_PUSH_ROWS     ...until this many rows arrived (default 3), then Stop
//   SLUICE_PUSH_PRODUCE_TOPIC, SLUICE_PUSH_PRODUCE_NDJSON
//                        optional: once the push query streams, POST this NDJSON file
//                        ({"key","value"} lines) to the topic and wait for more rows
//   SLUICE_PULL_SQL      a pull query or statement whose result table must show...
//   SLUICE_PULL_ROWS     ...with at least this many rows (default 1; 0 accepts a message)
//   SLUICE_EXACT_TOPIC   a topic (created with one partition if missing) to which one record is
//                        produced whose JSON value a re-serialisation would change (integers past
//                        2^53, 1.50, 1e400, a duplicate key, escapes); the record browser must
//                        show it indented with every token as stored
//   SLUICE_EXACT_SQL_SETUP  optional statements run through POST /sql before SLUICE_EXACT_SQL
//                        (e.g. CREATE TABLE IF NOT EXISTS ... ; INSERT INTO ... 9007199254740993 ...)
//   SLUICE_EXACT_SQL     a pull query whose answer holds an integer above 2^53 (a BIGINT): the
//                        result table must show each such integer digit for digit
//   SLUICE_SCREENSHOT    where to write a PNG of the pipelines page
//   CHROMIUM             the browser (default /usr/bin/chromium)
//   SLUICE_E2E_TIMEOUT_MS  the bound on the whole run (default 90000)
//
// A check whose variables are unset is skipped (and says so). Prints one line per check and
// "N passed, N failed, N skipped"; exits 0 when none failed, 1 otherwise.

import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const env = process.env;
const TOTAL_MS = Number(env.SLUICE_E2E_TIMEOUT_MS ?? 90_000);
const started = Date.now();

const watchdog = setTimeout(() => {
  console.error(`FAIL: the run took longer than ${TOTAL_MS} ms; stopped`);
  // Playwright kills the browser it launched when the process exits.
  process.exit(1);
}, TOTAL_MS);
watchdog.unref();

if (!env.SLUICE_URL) {
  console.error("FAIL: set SLUICE_URL to the console's URL (e.g. http://127.0.0.1:7070/)");
  process.exit(1);
}
const BASE = new URL(env.SLUICE_URL);
const TOKEN = env.SLUICE_TOKEN || null;
const CHROMIUM = env.CHROMIUM || "/usr/bin/chromium";
const T = 15_000; // default wait for one thing to show

// ---- the API, read directly to know what the pages must show ----

async function api(path, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  const res = await fetch(new URL(path, BASE), { ...init, headers });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* text */
  }
  return { status: res.status, body };
}
const messageOf = (body) => (body && typeof body === "object" ? (body.message ?? body.error) : String(body));
async function apiOk(path, init) {
  const r = await api(path, init);
  if (r.status < 200 || r.status > 299) throw new Error(`${path}: HTTP ${r.status}: ${messageOf(r.body)}`);
  return r.body;
}

// ---- checks ----

const results = [];
function log(line) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}`);
}
async function check(name, fn, skipReason) {
  if (skipReason) {
    results.push("skip");
    log(`skip - ${name}: ${skipReason}`);
    return;
  }
  try {
    const detail = await fn();
    results.push("pass");
    log(`ok   - ${name}${detail ? `: ${detail}` : ""}`);
  } catch (e) {
    results.push("fail");
    // Playwright's messages end with a call log in terminal colours: the first part says it.
    const message = String(e?.message ?? e)
      .replace(/\x1b\[[0-9;]*m/g, "")
      .split(/\n\s*Call log:/)[0]
      .trim();
    log(`FAIL - ${name}: ${message}`);
  }
}

const tid = (id) => `[data-testid="${id}"]`;
const enc = encodeURIComponent;
/** Streams open on the worker (push queries and topic consumers), from /metrics, or null. */
async function openStreams() {
  const m = await api("/metrics");
  const hit = m.status === 200 && /^sluice_push_queries (\d+)/m.exec(String(m.body));
  return hit ? Number(hit[1]) : null;
}
/** JSON text with object keys sorted, to compare values whatever their key order. */
const canon = (v) =>
  JSON.stringify(v, (_k, x) =>
    x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : x,
  );
/** Same JSON, whatever the key order (big integers lose the same precision on both sides). */
const sameJson = (a, b) => canon(a) === canon(b);
/** JSON text without the whitespace between tokens (strings kept whole): two texts with the
 * same tokens, every number and string written the same, squeeze to the same text. */
const squeeze = (t) => t.replace(/"(?:[^"\\]|\\.)*"|[ \t\n\r]+/g, (m) => (m[0] === '"' ? m : ""));
/** The integer tokens of JSON text (outside strings) above 2^53 in magnitude, as written. */
const bigInts = (t) =>
  [...t.matchAll(/"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g)]
    .map((m) => m[0])
    .filter((x) => /^-?\d+$/.test(x) && (BigInt(x) > 2n ** 53n || BigInt(x) < -(2n ** 53n)));
const cssStr = (s) => JSON.stringify(s); // a quoted CSS attribute value

async function waitFor(what, fn, ms = T, every = 250) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e?.final) throw e;
      last = e;
    }
    if (Date.now() > until) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (${last.message ?? last})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

// ---- the browser ----

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 30_000,
});
const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(T);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("console", (m) => {
  // 401s before the token is typed are expected; anything else is worth seeing.
  if (m.type() === "error" && !/401/.test(m.text())) log(`browser console: ${m.text()}`);
});
// Requests that leave the console's origin (a CDN, web fonts) would fail offline.
const foreign = new Set();
page.on("request", (r) => {
  const u = new URL(r.url());
  if (!["data:", "blob:"].includes(u.protocol) && u.origin !== BASE.origin) foreign.add(u.origin);
});

const go = async (hash) => {
  const url = new URL(BASE);
  url.hash = hash;
  await page.goto(url.href, { waitUntil: "domcontentloaded" });
};

try {
  await check("console loads (and takes the token when asked)", async () => {
    await go("#/pipelines");
    const loaded = `${tid("pipeline")}, ${tid("no-pipelines")}`;
    const first = page.locator(`${loaded}, ${tid("token-input")}`).first();
    await first.waitFor();
    let how = "loaded without a token";
    if ((await first.getAttribute("data-testid")) === "token-input") {
      if (!TOKEN) throw new Error("the console asks for an API token: set SLUICE_TOKEN");
      await page.locator(tid("token-input")).fill(TOKEN);
      await page.locator(tid("token-submit")).click();
      const after = page.locator(`${loaded}, ${tid("token-refused")}`).first();
      await after.waitFor();
      if ((await after.getAttribute("data-testid")) === "token-refused") {
        throw new Error("the worker refused SLUICE_TOKEN (401 with the token)");
      }
      how = "asked for the token, then loaded";
    }
    await page.locator(loaded).first().waitFor();
    const err = page.locator(tid("pipelines-error"));
    if (await err.count()) throw new Error(`the page shows an error: ${await err.innerText()}`);
    return how;
  });

  await check("pipelines page lists the worker's pipelines with their tasks", async () => {
    await go("#/pipelines");
    const doc = await apiOk("/pipelines");
    const names = doc.pipelines.map((p) => p.name);
    if (names.length === 0) throw new Error("the worker has no pipelines: nothing to compare");
    await waitFor(`pipelines ${names.join(", ")} on the page`, async () => {
      const shown = await page.locator(tid("pipeline")).evaluateAll((els) => els.map((e) => e.dataset.name));
      return names.every((n) => shown.includes(n));
    });
    for (const p of doc.pipelines) {
      const card = page.locator(`${tid("pipeline")}[data-name=${cssStr(p.name)}]`);
      const tasks = await card.locator(tid("task")).evaluateAll((els) => els.map((e) => e.dataset.name));
      for (const t of p.tasks) {
        if (!tasks.includes(t.name)) throw new Error(`pipeline ${p.name}: task ${t.name} is not shown`);
      }
    }
    // Rates come from two polls 2 s apart: wait for a number in a rate cell.
    await waitFor("a records/s rate (two polls)", async () => {
      const rates = await page.locator(tid("task-rate-in")).allInnerTexts();
      return rates.some((r) => /\d/.test(r));
    }, 10_000);
    const broken = doc.broken_files.length;
    if (broken && !(await page.locator(tid("broken-file")).count())) throw new Error("broken files are not shown");
    return `${names.join(", ")}; ${doc.pipelines.reduce((s, p) => s + p.tasks.length, 0)} tasks; rates shown`;
  });

  await check("persistent queries card lists the worker's queries", async () => {
    const r = await api("/queries");
    if (r.status !== 200) throw new Error(`GET /queries: HTTP ${r.status}: ${messageOf(r.body)}`);
    const qs = r.body.queries;
    await go("#/pipelines");
    const card = page.locator(tid("queries"));
    await card.waitFor();
    if (qs.length === 0) {
      await card.locator(tid("no-queries")).waitFor();
      return "no persistent queries (the card says so)";
    }
    const ids = qs.map((q) => q.id);
    await waitFor(`queries ${ids.join(", ")} in the card`, async () => {
      const shown = await card.locator(tid("query")).evaluateAll((els) => els.map((e) => e.dataset.id));
      return ids.every((id) => shown.includes(id)) && shown.length === ids.length;
    });
    const notes = [];
    for (const q of qs) {
      const row = card.locator(`${tid("query")}[data-id=${cssStr(q.id)}]`);
      const sink = (await row.locator(tid("query-sink")).innerText()).trim();
      if (sink !== q.sink) throw new Error(`${q.id}: sink ${JSON.stringify(sink)}, the API says ${JSON.stringify(q.sink)}`);
      // State and commits move: compare with a fresh answer until they agree.
      await waitFor(`${q.id}'s state and commits as the API has them`, async () => {
        const now = (await apiOk("/queries")).queries.find((x) => x.id === q.id);
        const state = await row.getAttribute("data-state", { timeout: 1000 });
        const want = now?.status?.state ?? (now?.failed_to_start ? "failed" : "stopped");
        if (state !== want) return false;
        if (!now?.status) return true;
        const commits = Number((await row.locator(tid("task-commits")).innerText()).replace(/\D/g, ""));
        return commits === now.status.commits;
      }, 10_000);
      await page.locator(`${tid("query-details")}[data-id=${cssStr(q.id)}] summary`).click();
      const stmt = (await page.locator(`${tid("query-details")}[data-id=${cssStr(q.id)}] ${tid("query-statement")}`).innerText()).trim();
      if (stmt !== q.statement.trim()) throw new Error(`${q.id}: statement ${JSON.stringify(stmt)} is not the API's`);
      const s = q.status;
      notes.push(
        s
          ? `${q.id} -> ${q.sink} ${s.state}, ${s.commits} commits, last commit ${await row.locator(tid("task-last-commit")).innerText()}, avg ${await row.locator(tid("task-commit-avg")).innerText()}`
          : `${q.id} -> ${q.sink} not running`,
      );
    }
    if (qs.some((q) => q.status)) {
      await waitFor("a query's records/s rate (two polls)", async () => {
        const rates = await card.locator(tid("task-rate-in")).allInnerTexts();
        return rates.some((x) => /\d/.test(x));
      }, 10_000);
      await card.locator(tid("task-chart")).first().waitFor();
    }
    return `${notes.join("; ")}; statements shown; rates and charts shown`;
  });

  await check("topics page lists topics (internal ones behind the toggle) with offsets", async () => {
    const before = await apiOk("/topics?all=true");
    await go("#/topics");
    // Newer workers flag internal topics; older ones leave them out of /topics.
    const flagged = before.topics.some((t) => "internal" in t);
    const names = flagged
      ? before.topics.filter((t) => !t.internal).map((t) => t.name)
      : (await apiOk("/topics")).topics.map((t) => t.name);
    const shown = async () =>
      page.locator(tid("topic-row")).evaluateAll((els) => els.map((e) => e.dataset.name));
    const toggle = page.locator(tid("topics-internal"));
    if (await toggle.isChecked()) await toggle.uncheck();
    await waitFor(`topics ${names.join(", ")}`, async () => {
      const s = await shown();
      return names.every((n) => s.includes(n)) && s.length === names.length;
    });
    // OFFSETS: what the page shows lies between the API's answers before and after it.
    const counts = await page.locator(tid("topic-row")).evaluateAll((els) =>
      els.map((e) => [e.dataset.name, Number(e.querySelector('[data-testid="topic-offsets"]').textContent.replace(/\D/g, ""))]),
    );
    const after = await apiOk("/topics?all=true");
    const count = (doc, n) => {
      const t = doc.topics.find((x) => x.name === n);
      return t ? (t.offsets ?? t.records) : undefined;
    };
    for (const [n, c] of counts) {
      const lo = count(before, n);
      const hi = count(after, n);
      if (lo === undefined || hi === undefined || c < Math.min(lo, hi) || c > Math.max(lo, hi)) {
        throw new Error(`topic ${n}: ${c} offsets shown, the API said ${lo} then ${hi}`);
      }
    }
    const internal = before.topics.map((t) => t.name).filter((n) => !names.includes(n));
    if (internal.length) {
      await toggle.check();
      await waitFor(`internal topics ${internal.join(", ")}`, async () => {
        const s = await shown();
        return internal.every((n) => s.includes(n));
      });
      await toggle.uncheck();
    }
    return `${names.length} topics with offsets as the API has them, ${internal.length} internal behind the toggle${flagged ? " (by their internal flag)" : ""}`;
  });

  await check("consumer groups page lists groups and a group's lag", async () => {
    await go("#/groups");
    const doc = await apiOk("/groups");
    if (doc.groups.length === 0) {
      await page.getByText("No consumer groups.").waitFor();
      return "no groups (the page says so)";
    }
    const names = doc.groups.map((g) => g.group);
    await waitFor(`groups ${names.join(", ")}`, async () => {
      const s = await page.locator(tid("group-row")).evaluateAll((els) => els.map((e) => e.dataset.name));
      return names.every((n) => s.includes(n));
    });
    // A group named . or .. has no URL fetch can send (it resolves %2E segments too): its page
    // says so and shows the list's state; the others show their partitions.
    const dots = names.filter((n) => n === "." || n === "..");
    for (const d of dots) {
      await go("#/groups");
      await page.locator(`${tid("group-row")}[data-name=${cssStr(d)}] a`).click();
      await page.locator(`${tid("group-page")}[data-name=${cssStr(d)}] ${tid("group-dot-name")}`).waitFor();
      // The state moves (a member leaving): compare with a fresh answer until they agree.
      await waitFor(`group ${d}'s state as the API has it`, async () => {
        const want = (await apiOk("/groups")).groups.find((x) => x.group === d)?.state;
        const shown = await page.locator(`${tid("group-page")} .badge`).innerText({ timeout: 1000 });
        return shown === want;
      });
    }
    const g = names.find((n) => !dots.includes(n));
    if (g === undefined) return `${names.length} groups, all named . or ..: their pages explain why they show no partitions`;
    await go("#/groups");
    await page.locator(`${tid("group-row")}[data-name=${cssStr(g)}] a`).click();
    const detail = await apiOk(`/groups/${encodeURIComponent(g)}`);
    await page.locator(tid("group-page")).waitFor();
    await waitFor(`${detail.partitions.length} partitions of group ${g}`, async () => {
      return (await page.locator(tid("group-partition")).count()) === detail.partitions.length;
    });
    await page.locator(tid("group-lag-chart")).waitFor();
    return `${names.length} groups; ${g}: ${detail.partitions.length} partitions with lag chart${dots.length ? `; groups ${dots.join(" and ")}: state shown, and why no partitions` : ""}`;
  });

  const deployName = env.SLUICE_DEPLOY_NAME;
  const deployFile = env.SLUICE_DEPLOY_TOML;
  const deploySkip = !deployName || !deployFile ? "SLUICE_DEPLOY_NAME and SLUICE_DEPLOY_TOML not both set" : null;

  await check("deploy form shows the worker's error verbatim", async () => {
    const bad = "this is = = not toml\n";
    const expected = await api(`/pipelines/${encodeURIComponent(deployName)}`, {
      method: "PUT",
      headers: { "Content-Type": "application/toml" },
      body: bad,
    });
    if (expected.status !== 400) throw new Error(`the worker answered ${expected.status} to a bad file, not 400`);
    await go("#/pipelines");
    await page.locator(tid("deploy-name")).fill(deployName);
    await page.locator(tid("deploy-toml")).fill(bad);
    await page.locator(tid("deploy-submit")).click();
    const shown = (await page.locator(`${tid("deploy-error")} pre`).innerText()).trim();
    if (shown !== String(messageOf(expected.body)).trim()) {
      throw new Error(`shown ${JSON.stringify(shown)}, the worker said ${JSON.stringify(messageOf(expected.body))}`);
    }
    return JSON.stringify(shown);
  }, deploySkip);

  await check(`deploy ${deployName ?? "a pipeline"} from the Deploy form until it runs`, async () => {
    const toml = readFileSync(deployFile, "utf8");
    await go("#/pipelines");
    await page.locator(tid("deploy-name")).fill(deployName);
    await page.locator(tid("deploy-toml")).fill(toml);
    await page.locator(tid("deploy-submit")).click();
    const outcome = await page.locator(`${tid("deploy-result")}, ${tid("deploy-error")}`).first();
    await outcome.waitFor({ timeout: 30_000 });
    if ((await outcome.getAttribute("data-testid")) === "deploy-error") {
      throw new Error(`the worker refused it: ${await outcome.innerText()}`);
    }
    const message = await outcome.innerText();
    const card = page.locator(`${tid("pipeline")}[data-name=${cssStr(deployName)}]`);
    await waitFor(`pipeline ${deployName} listed as running`, async () => {
      return (await card.getAttribute("data-state", { timeout: 1000 })) === "running";
    }, 30_000);
    const tasks = await card.locator(tid("task")).count();
    return `${JSON.stringify(message)}; running with ${tasks} tasks`;
  }, deploySkip);

  await check(`pause, resume and restart ${deployName ?? "a pipeline"} from its buttons`, async () => {
    await go("#/pipelines");
    const card = page.locator(`${tid("pipeline")}[data-name=${cssStr(deployName)}]`);
    const stateIs = (want) => async () => (await card.getAttribute("data-state", { timeout: 1000 })) === want;
    const apiState = async () => (await apiOk(`/pipelines/${encodeURIComponent(deployName)}`)).state;
    if (await card.locator(tid("pipeline-reset-offsets")).count()) throw new Error("Reset offsets is shown while running");
    await card.locator(tid("pipeline-pause")).click();
    await waitFor(`${deployName} shown paused`, stateIs("paused"), 20_000);
    if ((await apiState()) !== "paused") throw new Error("the page says paused, the API does not");
    // Reset offsets shows only while paused; with SLUICE_RESET_OFFSETS=1 it is used (confirmed).
    await card.locator(tid("pipeline-reset-offsets")).waitFor();
    let reset = "";
    if (env.SLUICE_RESET_OFFSETS === "1") {
      const had = (await apiOk(`/pipelines/${enc(deployName)}/offsets`)).offsets.length;
      let asked = null;
      page.once("dialog", (d) => {
        asked = d.message();
        d.accept();
      });
      await card.locator(tid("pipeline-reset-offsets")).click();
      await waitFor("the reset's answer", async () => /reset|forgotten/i.test(await card.locator(tid("pipeline-action-message")).innerText({ timeout: 1000 })));
      const msg = await card.locator(tid("pipeline-action-message")).innerText();
      if (!asked) throw new Error("Reset offsets did not ask for confirmation");
      if (await card.locator(`${tid("pipeline-action-message")}.error`).count()) throw new Error(msg);
      const left = (await apiOk(`/pipelines/${enc(deployName)}/offsets`)).offsets.length;
      if (left !== 0) throw new Error(`after the reset the API still lists ${left} offsets`);
      reset = `; reset offsets after a confirm() (${had} -> 0: ${JSON.stringify(msg)})`;
    }
    await card.locator(tid("pipeline-resume")).click();
    await waitFor(`${deployName} shown running again`, stateIs("running"), 20_000);
    await card.locator(tid("pipeline-restart")).click();
    await card.locator(tid("pipeline-action-message")).waitFor();
    const msg = await card.locator(tid("pipeline-action-message")).innerText();
    if (!/done/.test(msg)) throw new Error(`restart: ${msg}`);
    await waitFor(`${deployName} running after the restart`, stateIs("running"), 20_000);
    return `paused (Reset offsets shown)${reset}, resumed, restarted; the API says ${await apiState()}`;
  }, deploySkip);

  // The pipeline whose Edit, Validate, Offsets and task Restart are checked.
  const target = env.SLUICE_PIPELINE || deployName || (await apiOk("/pipelines")).pipelines[0]?.name;
  const targetSkip = target ? null : "no pipeline to use (SLUICE_PIPELINE)";
  const cardOf = (name) => page.locator(`${tid("pipeline")}[data-name=${cssStr(name)}]`);
  let config = null;

  await check(`Edit loads ${target ?? "a pipeline"}'s file into the Deploy form`, async () => {
    const r = await api(`/pipelines/${enc(target)}/config`);
    if (r.status !== 200) throw new Error(`GET /pipelines/${target}/config: HTTP ${r.status}: ${messageOf(r.body)}`);
    config = typeof r.body === "string" ? r.body : JSON.stringify(r.body);
    await go("#/pipelines");
    await cardOf(target).locator(tid("pipeline-edit")).click();
    await waitFor("the Deploy form to say what it edits", async () => (await page.locator(tid("deploy-editing")).innerText({ timeout: 1000 })) === target);
    const name = await page.locator(tid("deploy-name")).inputValue();
    const toml = await page.locator(tid("deploy-toml")).inputValue();
    if (name !== target) throw new Error(`the name field holds ${JSON.stringify(name)}`);
    if (toml !== config) throw new Error(`the TOML field (${toml.length} chars) is not GET /pipelines/${target}/config (${config.length} chars)`);
    return `name ${name}, ${toml.split("\n").length} lines as GET /pipelines/${target}/config has them`;
  }, targetSkip);

  await check(`Validate shows what ${target ?? "a pipeline"}'s file would deploy, or the error`, async () => {
    if (config == null) throw new Error("the Edit check failed: no file in the form");
    const validate = (body) =>
      api(`/pipelines/validate?name=${enc(target)}`, { method: "POST", headers: { "Content-Type": "application/toml" }, body });
    const want = await validate(config);
    await page.locator(tid("deploy-validate")).click();
    const outcome = page.locator(`${tid("validate-result")}, ${tid("validate-error")}`).first();
    await outcome.waitFor();
    let shown;
    if (want.status === 200) {
      if ((await outcome.getAttribute("data-testid")) !== "validate-result") {
        throw new Error(`the page shows an error, the API says valid: ${await outcome.innerText()}`);
      }
      for (const k of ["name", "topics", "sources", "sinks", "statements"]) {
        const v = await outcome.getAttribute(`data-${k}`);
        if (v !== String(want.body[k])) throw new Error(`${k}: the page shows ${v}, the API ${want.body[k]}`);
      }
      shown = (await outcome.innerText()).trim();
    } else {
      const text = (await outcome.locator("pre").innerText()).trim();
      if (text !== String(messageOf(want.body)).trim()) throw new Error(`shown ${JSON.stringify(text)}, the API said ${JSON.stringify(messageOf(want.body))}`);
      shown = `HTTP ${want.status}: ${text}`;
    }
    // A bad file: the worker's 400 message, verbatim.
    const bad = "this is = = not toml\n";
    const refused = await validate(bad);
    if (refused.status !== 400) throw new Error(`the worker answered ${refused.status} to a bad file, not 400`);
    await page.locator(tid("deploy-toml")).fill(bad);
    await page.locator(tid("deploy-validate")).click();
    const err = (await page.locator(`${tid("validate-error")} pre`).innerText()).trim();
    if (err !== String(messageOf(refused.body)).trim()) throw new Error(`bad file: shown ${JSON.stringify(err)}, the worker said ${JSON.stringify(messageOf(refused.body))}`);
    return `${JSON.stringify(shown)}; a bad file: ${JSON.stringify(err)}`;
  }, targetSkip);

  await check(`Offsets of ${target ?? "a pipeline"} as the API lists them`, async () => {
    await go("#/pipelines");
    const card = cardOf(target);
    await card.locator(`${tid("pipeline-offsets")} summary`).click();
    const key = (task, partition, offset) => `${task}|${partition ?? ""}|${canon(offset)}`;
    let rows = [];
    // A running source commits new positions: the page must match an answer taken around it.
    await waitFor("the offsets shown to match the API's", async () => {
      const a = (await apiOk(`/pipelines/${enc(target)}/offsets`)).offsets.map((o) => key(o.task, o.partition, o.offset));
      await card.locator(tid("offsets-refresh")).click();
      await card.locator(`${tid("offsets-table")}, ${tid("offsets-empty")}`).first().waitFor();
      await page.waitForTimeout(300);
      rows = await card.locator(tid("offset-row")).evaluateAll((els) =>
        els.map((e) => [e.dataset.task, e.dataset.partition, e.querySelector('[data-testid="offset-value"]').textContent]),
      );
      const shown = rows.map(([t, p, v]) => key(t, p === "" ? null : Number(p), JSON.parse(v))).sort();
      const b = (await apiOk(`/pipelines/${enc(target)}/offsets`)).offsets.map((o) => key(o.task, o.partition, o.offset));
      return [a, b].some((x) => sameJson(x.sort(), shown));
    }, 15_000, 500);
    if (rows.length === 0) return "no committed positions (the page says so)";
    const tasks = [...new Set(rows.map((r) => r[0]))];
    return `${rows.length} entries (${tasks.join(", ")}), e.g. ${rows[0][0]}${rows[0][1] === "" ? "" : ` partition ${rows[0][1]}`}: ${rows[0][2].slice(0, 80)}`;
  }, targetSkip);

  await check(`a task of ${target ?? "a pipeline"} restarts from its Restart button`, async () => {
    const before = await apiOk(`/pipelines/${enc(target)}`);
    if (before.state === "paused") throw new Error(`${target} is paused: a task restart needs it running`);
    const task = before.tasks.find((t) => /^(source|sink) /.test(t.name));
    if (!task) throw new Error(`${target} has no source or sink task`);
    await go("#/pipelines");
    const card = cardOf(target);
    const row = card.locator(`${tid("task")}[data-name=${cssStr(task.name)}]`);
    await row.locator(tid("task-restart")).click();
    await waitFor("the restart's answer", async () =>
      (await card.locator(tid("pipeline-action-message")).innerText({ timeout: 1000 })).startsWith(`restart ${task.name}:`),
    );
    const msg = await card.locator(tid("pipeline-action-message")).innerText();
    if (!/: done$/.test(msg)) throw new Error(msg);
    await waitFor(`${task.name} running again (page and API)`, async () => {
      const t = (await apiOk(`/pipelines/${enc(target)}`)).tasks.find((x) => x.name === task.name);
      return t?.state === "running" && (await row.getAttribute("data-state", { timeout: 1000 })) === "running";
    }, 20_000);
    const after = (await apiOk(`/pipelines/${enc(target)}`)).tasks.find((x) => x.name === task.name);
    return `${JSON.stringify(msg)}; running again (records in ${task.records_in} before, ${after.records_in} now: its counters start over)`;
  }, targetSkip);

  const topic = env.SLUICE_BROWSE_TOPIC;
  await check(`record browser shows records of ${topic ?? "a topic"} with headers`, async () => {
    await apiOk(`/topics/${encodeURIComponent(topic)}`);
    await go(`#/topics/${encodeURIComponent(topic)}`);
    await page.locator(tid("partitions-table")).waitFor();
    await page.locator(tid("config-table")).waitFor();
    // The browser opens on the newest records of the first partition that has some; wait for
    // them (a topic being filled may need a moment, so read again until rows show).
    await waitFor(`records of ${topic}`, async () => {
      if ((await page.locator(tid("record-row")).count()) > 0) return true;
      await page.locator(tid("browse-last")).click();
      await page.waitForTimeout(500);
      return (await page.locator(tid("record-row")).count()) > 0;
    }, 30_000, 1000);
    const partition = Number(await page.locator(tid("browse-partition")).inputValue());
    const offsets = (await page.locator(tid("record-row")).evaluateAll((els) => els.map((e) => Number(e.dataset.offset)))).sort(
      (a, b) => a - b,
    );
    const from = offsets[0];
    const doc = await apiOk(
      `/topics/${encodeURIComponent(topic)}/records?partition=${partition}&offset=${from}&limit=${offsets.length}`,
    );
    const apiOffsets = doc.records.map((r) => r.offset);
    if (JSON.stringify(apiOffsets) !== JSON.stringify(offsets)) {
      throw new Error(`page shows offsets ${offsets.join(",")}, the API ${apiOffsets.join(",")}`);
    }
    let withHeaders = 0;
    for (const r of doc.records) {
      const row = page.locator(`${tid("record-row")}[data-offset="${r.offset}"]`);
      const value = (await row.locator(tid("record-value")).innerText()).trim();
      if (r.value != null) {
        // JSON is shown indented with every token as stored; other text as it is.
        let json = /^\s*[[{]/.test(r.value);
        try {
          JSON.parse(r.value);
        } catch {
          json = false;
        }
        const same = json ? squeeze(value) === squeeze(r.value) : value === r.value.trim();
        if (!same) throw new Error(`offset ${r.offset}: value ${JSON.stringify(value)} is not ${JSON.stringify(r.value)}`);
      }
      if (Array.isArray(r.headers) && r.headers.length) {
        withHeaders++;
        const shown = await row.locator(tid("record-header")).evaluateAll((els) =>
          els.map((e) => [e.dataset.key, e.querySelector("dd")?.textContent ?? ""]),
        );
        for (const h of r.headers) {
          const s = shown.find(([k]) => k === h.key);
          if (!s) throw new Error(`offset ${r.offset}: header ${h.key} is not shown`);
          if (h.value != null && s[1] !== h.value) {
            throw new Error(`offset ${r.offset}: header ${h.key} shows ${JSON.stringify(s[1])}, not ${JSON.stringify(h.value)}`);
          }
        }
      }
    }
    const headersNote = doc.records.some((r) => "headers" in r)
      ? `${withHeaders} with headers, all shown`
      : "the API gives no headers field";
    return `partition ${partition}, offsets ${from}..${offsets[offsets.length - 1]} (${offsets.length} records); ${headersNote}`;
  }, topic ? null : "SLUICE_BROWSE_TOPIC not set");

  const exactTopic = env.SLUICE_EXACT_TOPIC;
  await check(`record browser shows a JSON value of ${exactTopic ?? "a topic"} exactly as stored`, async () => {
    const t = enc(exactTopic);
    const exists = await api(`/topics/${t}`);
    if (exists.status === 404) {
      await apiOk("/topics", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: exactTopic, partitions: 1 }),
      });
    } else if (exists.status !== 200) throw new Error(`GET /topics/${exactTopic}: HTTP ${exists.status}`);
    const nonce = `e2e-exact-${Date.now()}`;
    const value =
      '{"id": 12345678901234567891, "big": [9007199254740993, -9223372036854775809], ' +
      '"amount": 0.1000000000000000055511151231257827, "price": 1.50, "x": 1e400, "a": 1, "a": 2, ' +
      `"s": "\\u20ac \\"q\\" é", "e": {}, "nonce": "${nonce}"}`;
    const want = [
      "{",
      '  "id": 12345678901234567891,',
      '  "big": [',
      "    9007199254740993,",
      "    -9223372036854775809",
      "  ],",
      '  "amount": 0.1000000000000000055511151231257827,',
      '  "price": 1.50,',
      '  "x": 1e400,',
      '  "a": 1,',
      '  "a": 2,',
      '  "s": "\\u20ac \\"q\\" é",',
      '  "e": {},',
      `  "nonce": "${nonce}"`,
      "}",
    ].join("\n");
    await apiOk(`/topics/${t}/records`, {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: `{"key": ${JSON.stringify(nonce)}, "value": ${value}}\n`,
    });
    // Where it landed, and that the worker kept the value's text as written.
    const info = await apiOk(`/topics/${t}`);
    let rec;
    for (const p of info.partitions) {
      const from = Math.max(p.log_start_offset, p.last_stable_offset - 20);
      const doc = await apiOk(`/topics/${t}/records?partition=${p.partition}&offset=${from}&limit=20`);
      rec = doc.records.find((r) => r.key === nonce) ?? rec;
    }
    if (!rec) throw new Error(`the record produced (key ${nonce}) is not found through the API`);
    if (rec.value !== value) throw new Error(`the worker changed the value's text: ${JSON.stringify(rec.value)}`);
    await go(`#/topics/${t}`);
    await page.locator(tid("record-browser")).waitFor();
    await page.locator(tid("browse-partition")).selectOption(String(rec.partition));
    await page.locator(tid("browse-offset")).fill(String(rec.offset));
    await page.locator(tid("browse-limit")).fill("1");
    await page.locator(tid("browse-read")).click();
    const row = page.locator(`${tid("record-row")}[data-partition="${rec.partition}"][data-offset="${rec.offset}"]`);
    await row.waitFor();
    const shown = await row.locator(tid("record-value")).innerText();
    if (shown !== want) throw new Error(`shown ${JSON.stringify(shown)}, not ${JSON.stringify(want)}`);
    return `partition ${rec.partition} offset ${rec.offset}: 12345678901234567891, 9007199254740993, 1.50, 1e400 and both "a" keys shown as stored`;
  }, exactTopic ? null : "SLUICE_EXACT_TOPIC not set");

  const followTopic = env.SLUICE_FOLLOW_TOPIC;
  await check(`Follow tails ${followTopic ?? "a topic"}: a record produced after it started shows on top`, async () => {
    await apiOk(`/topics/${enc(followTopic)}`);
    const idle = await openStreams();
    await go(`#/topics/${enc(followTopic)}`);
    await page.locator(tid("partitions-table")).waitFor();
    const follow = page.locator(tid("follow"));
    const followState = () => follow.getAttribute("data-state", { timeout: 1000 });
    const followCount = async () => Number((await page.locator(tid("follow-count")).innerText()).replace(/\D/g, "") || 0);
    await page.locator(tid("browse-follow")).check();
    await waitFor("the stream to open", async () => {
      const s = await followState();
      if (s === "failed" || s === "ended" || s === "closed") {
        throw Object.assign(new Error(`Follow is ${s}: ${(await page.locator(tid("follow-message")).allInnerTexts()).join(" ")}`), { final: true });
      }
      return s === "following";
    });
    const open = await openStreams();
    if (idle != null && open !== idle + 1) throw new Error(`the worker counts ${open} open streams, ${idle} before Follow`);
    await page.waitForTimeout(300);
    const before = await followCount();
    const nonce = `${Date.now()}`;
    const value = { ride: Number(nonce.slice(-9)), zone: "e2e", fare: 1.5, ts: new Date().toISOString().replace(/\.\d+Z$/, "Z") };
    await apiOk(`/topics/${enc(followTopic)}/records`, {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: JSON.stringify({ key: "e2e", value, headers: { "e2e-follow": nonce } }) + "\n",
    });
    const mine = page.locator(tid("follow-row")).filter({ has: page.locator(`${tid("record-header")}[data-key="e2e-follow"]`, { hasText: nonce }) });
    await waitFor("the produced record in the followed rows", async () => (await mine.count()) === 1, 15_000);
    const after = await followCount();
    const rows = await page.locator(tid("follow-row")).evaluateAll((els) => els.map((e) => `${e.dataset.partition}:${e.dataset.offset}`));
    const where = `${await mine.getAttribute("data-partition")}:${await mine.getAttribute("data-offset")}`;
    const at = rows.indexOf(where);
    // Nothing else arrived after it: it is the newest, on top.
    if (after === before + 1 && at !== 0) throw new Error(`the new record is row ${at + 1}, not on top`);
    const key = (await mine.locator(tid("record-key")).innerText()).trim();
    const shownValue = JSON.parse(await mine.locator(tid("record-value")).innerText());
    if (key !== "e2e" || !sameJson(shownValue, value)) throw new Error(`shown key ${key}, value ${JSON.stringify(shownValue)}`);
    // Off: the stream ends on the worker (its open-streams gauge drops back).
    await page.locator(tid("browse-follow")).uncheck();
    await follow.waitFor({ state: "detached" });
    const gauge = async (what) => {
      if (idle == null) return "";
      await waitFor(`the worker's open streams back to ${idle} (${what})`, async () => (await openStreams()) === idle, 10_000);
      return `; ${what}: the stream ended on the worker`;
    };
    let ends = await gauge("Follow off");
    // Leaving the page ends it too.
    await page.locator(tid("browse-follow")).check();
    await waitFor("the stream to open again", async () => (await followState()) === "following");
    await go("#/pipelines");
    ends += await gauge("page left");
    return `${before} -> ${after} records while following; the produced one (partition:offset ${where}) shown${at === 0 ? " on top" : ` at row ${at + 1}`} with its header${ends}`;
  }, followTopic ? null : "SLUICE_FOLLOW_TOPIC not set");

  const pushSql = env.SLUICE_PUSH_SQL;
  const pushRows = Number(env.SLUICE_PUSH_ROWS ?? 3);
  await check(`push query streams ${pushRows}+ rows, then stops`, async () => {
    await go("#/sql");
    await page.locator(tid("sql-input")).fill(pushSql);
    await page.locator(tid("sql-input")).press("Control+Enter");
    const count = async () => Number((await page.locator(tid("push-count")).innerText()).replace(/\D/g, "") || 0);
    const state = () => page.locator(tid("push")).getAttribute("data-state");
    await page.locator(tid("push")).waitFor();
    await waitFor(`${pushRows} rows streamed`, async () => {
      const enough =
        (await count()) >= pushRows && (await page.locator(tid("push-row")).count()) >= Math.min(pushRows, 1000);
      if (enough) return true;
      const s = await state();
      if (s !== "streaming") {
        const m = await page.locator(tid("push-message")).allInnerTexts();
        throw Object.assign(new Error(`the query is ${s} after ${await count()} rows: ${m.join(" ")}`), { final: true });
      }
      return false;
    }, 30_000);
    let produced = "";
    if (env.SLUICE_PUSH_PRODUCE_TOPIC && env.SLUICE_PUSH_PRODUCE_NDJSON) {
      const before = await count();
      const body = readFileSync(env.SLUICE_PUSH_PRODUCE_NDJSON, "utf8");
      const r = await apiOk(`/topics/${encodeURIComponent(env.SLUICE_PUSH_PRODUCE_TOPIC)}/records`, {
        method: "POST",
        headers: { "Content-Type": "application/x-ndjson" },
        body,
      });
      await waitFor("rows of the records produced while streaming", async () => (await count()) > before, 20_000);
      produced = `; produced ${r.produced} to ${env.SLUICE_PUSH_PRODUCE_TOPIC} while streaming, count ${before} -> ${await count()}`;
    }
    const cols = await page.locator(`${tid("push-table")} th`).allInnerTexts();
    let how = "stopped";
    if ((await state()) === "streaming") {
      await page.locator(tid("sql-stop")).click();
      await waitFor("the query to show stopped", async () => (await state()) === "stopped", 5000);
    } else {
      how = `${await state()} by itself: ${(await page.locator(tid("push-message")).allInnerTexts()).join(" ")}`;
    }
    const n = await count();
    // The worker ends the query when the connection closes: its gauge goes back down.
    const metrics = await api("/metrics");
    let gauge = "";
    if (metrics.status === 200 && /^sluice_push_queries \d+/m.test(metrics.body)) {
      await waitFor("sluice_push_queries to drop to 0 on the worker", async () => {
        const m = await api("/metrics");
        return /^sluice_push_queries 0$/m.test(m.body);
      }, 10_000);
      gauge = "; the worker's sluice_push_queries went back to 0";
    }
    return `${n} rows, columns ${cols.join(", ")}${produced}; ${how}${gauge}`;
  }, pushSql ? null : "SLUICE_PUSH_SQL not set");

  const pullSql = env.SLUICE_PULL_SQL;
  const pullRows = Number(env.SLUICE_PULL_ROWS ?? 1);
  await check(`pull query shows a result table`, async () => {
    await go("#/sql");
    await page.locator(tid("sql-input")).fill(pullSql);
    await page.locator(tid("sql-run")).click();
    const outcome = page.locator(`${tid("sql-results")}, ${tid("sql-error")}`).first();
    await outcome.waitFor({ timeout: 20_000 });
    if ((await outcome.getAttribute("data-testid")) === "sql-error") {
      throw new Error(`the worker refused it: ${await outcome.innerText()}`);
    }
    const rows = await page.locator(tid("sql-row")).count();
    const messages = await page.locator(tid("sql-message")).allInnerTexts();
    const doc = await apiOk("/sql", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ sql: pullSql }) });
    const apiRows = doc.results.reduce((s, r) => s + (r.rows ? r.rows.length : 0), 0);
    if (rows < pullRows) throw new Error(`${rows} rows shown, wanted at least ${pullRows} (messages: ${messages.join(" | ")})`);
    if (pullRows > 0 && rows !== apiRows) throw new Error(`${rows} rows shown, the API answers ${apiRows}`);
    const cols = await page.locator(`${tid("sql-table")} th`).allInnerTexts();
    return `${rows} rows, columns ${cols.join(", ")}${messages.length ? `; messages: ${messages.join(" | ")}` : ""}`;
  }, pullSql ? null : "SLUICE_PULL_SQL not set");

  const exactSql = env.SLUICE_EXACT_SQL;
  await check("a pull query shows integers above 2^53 exactly", async () => {
    const sqlApi = async (sql) => {
      const res = await fetch(new URL("/sql", BASE), {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {}) },
        body: JSON.stringify({ sql }),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`POST /sql ${JSON.stringify(sql)}: HTTP ${res.status}: ${text}`);
      return text;
    };
    if (env.SLUICE_EXACT_SQL_SETUP) await sqlApi(env.SLUICE_EXACT_SQL_SETUP);
    // The API's answer as text (JSON.parse would round the integers this is about).
    let big = [];
    await waitFor("an integer above 2^53 in the API's answer", async () => {
      big = bigInts(await sqlApi(exactSql));
      return big.length > 0;
    }, 15_000, 500);
    await go("#/sql");
    await page.locator(tid("sql-input")).fill(exactSql);
    await page.locator(tid("sql-run")).click();
    const outcome = page.locator(`${tid("sql-results")}, ${tid("sql-error")}`).first();
    await outcome.waitFor({ timeout: 20_000 });
    if ((await outcome.getAttribute("data-testid")) === "sql-error") throw new Error(`the worker refused it: ${await outcome.innerText()}`);
    const cells = await page.locator(`${tid("sql-table")} td`).allInnerTexts();
    const missing = big.filter((x) => !cells.some((c) => c.trim() === x || bigInts(c).includes(x)));
    if (missing.length) throw new Error(`${missing.join(", ")} not shown exactly (cells: ${cells.join(" | ")})`);
    big = [...new Set(big)];
    return `${big.join(", ")} shown as the worker sent ${big.length > 1 ? "them" : "it"}`;
  }, exactSql ? null : "SLUICE_EXACT_SQL not set");

  await check("screenshot of the pipelines page", async () => {
    await go("#/pipelines");
    await page.locator(tid("pipeline")).first().waitFor();
    // Let the polls (every 2 s) draw a few points of the rate charts: a line of 3+ points.
    await waitFor("rate charts drawn", async () => {
      const ds = await page.locator(`${tid("task-chart")} path`).evaluateAll((els) => els.map((e) => e.getAttribute("d") ?? ""));
      return ds.some((d) => (d.match(/L/g) ?? []).length >= 2);
    }, 15_000);
    await page.screenshot({ path: env.SLUICE_SCREENSHOT, fullPage: true });
    return env.SLUICE_SCREENSHOT;
  }, env.SLUICE_SCREENSHOT ? null : "SLUICE_SCREENSHOT not set");

  await check("no script errors and no requests off the console's origin", async () => {
    if (pageErrors.length) throw new Error(`uncaught errors in the page: ${pageErrors.join(" | ")}`);
    if (foreign.size) throw new Error(`requests to other origins (offline they fail): ${[...foreign].join(", ")}`);
    return null;
  });
} finally {
  await browser.close().catch(() => {});
}

const count = (k) => results.filter((r) => r === k).length;
console.log(`${count("pass")} passed, ${count("fail")} failed, ${count("skip")} skipped`);
clearTimeout(watchdog);
process.exit(count("fail") ? 1 : 0);

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
//   SLUICE_BROWSE_TOPIC  a topic whose records the record browser must show (with headers)
//   SLUICE_PUSH_SQL      a push query (EMIT CHANGES) to stream on the SQL page...
//   SLUICE_PUSH_ROWS     ...until this many rows arrived (default 3), then Stop
//   SLUICE_PUSH_PRODUCE_TOPIC, SLUICE_PUSH_PRODUCE_NDJSON
//                        optional: once the push query streams, POST this NDJSON file
//                        ({"key","value"} lines) to the topic and wait for more rows
//   SLUICE_PULL_SQL      a pull query or statement whose result table must show...
//   SLUICE_PULL_ROWS     ...with at least this many rows (default 1; 0 accepts a message)
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

  await check("topics page lists topics (internal ones behind the toggle)", async () => {
    await go("#/topics");
    const doc = await apiOk("/topics");
    const all = await apiOk("/topics?all=true");
    const names = doc.topics.map((t) => t.name);
    const shown = async () =>
      page.locator(tid("topic-row")).evaluateAll((els) => els.map((e) => e.dataset.name));
    const toggle = page.locator(tid("topics-internal"));
    if (await toggle.isChecked()) await toggle.uncheck();
    await waitFor(`topics ${names.join(", ")}`, async () => {
      const s = await shown();
      return names.every((n) => s.includes(n)) && s.length === names.length;
    });
    const internal = all.topics.map((t) => t.name).filter((n) => !names.includes(n));
    if (internal.length) {
      await toggle.check();
      await waitFor(`internal topics ${internal.join(", ")}`, async () => {
        const s = await shown();
        return internal.every((n) => s.includes(n));
      });
      await toggle.uncheck();
    }
    return `${names.length} topics, ${internal.length} internal behind the toggle`;
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
    const g = names[0];
    await page.locator(`${tid("group-row")}[data-name=${cssStr(g)}] a`).click();
    const detail = await apiOk(`/groups/${encodeURIComponent(g)}`);
    await page.locator(tid("group-page")).waitFor();
    await waitFor(`${detail.partitions.length} partitions of group ${g}`, async () => {
      return (await page.locator(tid("group-partition")).count()) === detail.partitions.length;
    });
    await page.locator(tid("group-lag-chart")).waitFor();
    return `${names.length} groups; ${g}: ${detail.partitions.length} partitions with lag chart`;
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
    await card.locator(tid("pipeline-pause")).click();
    await waitFor(`${deployName} shown paused`, stateIs("paused"), 20_000);
    if ((await apiState()) !== "paused") throw new Error("the page says paused, the API does not");
    await card.locator(tid("pipeline-resume")).click();
    await waitFor(`${deployName} shown running again`, stateIs("running"), 20_000);
    await card.locator(tid("pipeline-restart")).click();
    await card.locator(tid("pipeline-action-message")).waitFor();
    const msg = await card.locator(tid("pipeline-action-message")).innerText();
    if (!/done/.test(msg)) throw new Error(`restart: ${msg}`);
    await waitFor(`${deployName} running after the restart`, stateIs("running"), 20_000);
    return `paused, resumed, restarted; the API says ${await apiState()}`;
  }, deploySkip);

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
        let want = r.value;
        try {
          want = JSON.stringify(JSON.parse(r.value), null, 2);
        } catch {
          /* text */
        }
        if (value !== want.trim()) throw new Error(`offset ${r.offset}: value ${JSON.stringify(value)} is not ${JSON.stringify(want)}`);
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

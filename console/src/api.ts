// Calls to the worker's API (same origin): the bearer token, error messages, and types.

import { useEffect, useState } from "preact/hooks";

const TOKEN_KEY = "sluice.token";

type Listener = () => void;
const listeners = new Set<Listener>();

/** The auth state every component may watch: whether a token is needed, and a counter
 * that grows when the token changes (pages refetch on it). */
export const auth = {
  needed: false,
  epoch: 0,
  token(): string | null {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  },
  set(token: string | null) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled: the token lives for this call only */
    }
    auth.needed = false;
    auth.dropped = null;
    auth.epoch++;
    emit();
  },
  /** Whether the token the worker answered 401 to was one we sent (a wrong token). */
  refused: false,
  /** Why a stored token was forgotten (it could not be sent), for the prompt. */
  dropped: null as string | null,
  ask(sent: boolean) {
    if (!auth.needed) {
      auth.needed = true;
      auth.refused = sent;
      emit();
    }
  },
};

function emit() {
  for (const l of listeners) l();
}

/** Re-renders on auth changes; returns the auth epoch. */
export function useAuth(): { needed: boolean; epoch: number } {
  const [, setN] = useState(0);
  useEffect(() => {
    const l = () => setN((n) => n + 1);
    listeners.add(l);
    return () => listeners.delete(l);
  }, []);
  return { needed: auth.needed, epoch: auth.epoch };
}

/** An API error: the HTTP status and the worker's message, verbatim. */
export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The message of an error body: `{"message"}` (new), `{"error"}` (old), or the text. */
export async function errorOf(res: Response, sentToken = false): Promise<ApiError> {
  const text = await res.text().catch(() => "");
  let message = text.trim();
  try {
    const j = JSON.parse(text);
    if (j && typeof j === "object") {
      const m = j.message ?? j.error;
      if (m != null) message = typeof m === "string" ? m : JSON.stringify(m);
    }
  } catch {
    /* not JSON: the text as it is */
  }
  if (res.status === 401) auth.ask(sentToken);
  return new ApiError(res.status, message || `HTTP ${res.status} ${res.statusText}`);
}

/** Why a token cannot go in an `Authorization` header, or null when it can. Header values
 * carry bytes, not text: a character past ISO-8859-1 (`€`) makes the browser refuse the
 * request, and the worker takes only printable ASCII, so that is what a token may hold. */
export function tokenProblem(token: string): string | null {
  if (token === "") return "The token is empty.";
  const bad = [...token].find((c) => c < " " || c > "~");
  if (bad === undefined) return null;
  const code = bad.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
  const control = bad < " " || (bad >= "\x7f" && bad < "\xa0");
  return `The token holds ${control ? "a control character" : `"${bad}"`} (U+${code}): an HTTP header carries only printable ASCII (letters, digits, punctuation), so no worker token can hold it.`;
}

/** fetch with the token; throws ApiError on a non-2xx answer. */
export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  let token = auth.token();
  const problem = token == null ? null : tokenProblem(token);
  if (problem) {
    // A stored token that cannot be sent (set by hand, or by an older console): forget it and
    // go without; a 401 then shows the prompt, saying why.
    auth.dropped = `The stored token could not be sent and was forgotten. ${problem}`;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled */
    }
    token = null;
  }
  if (token) headers.set("Authorization", `Bearer ${token}`);
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the worker: ${(e as Error).message}`);
  }
  if (!res.ok) throw await errorOf(res, token != null);
  return res;
}

export async function getJson<T>(path: string, init?: RequestInit): Promise<T> {
  const res = await request(path, init);
  return (await res.json()) as T;
}

export async function sendJson<T>(method: string, path: string, body?: unknown): Promise<T> {
  return getJson<T>(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/** A path segment (or query value), percent-encoded, `.` and `..` too (`%2E`, `%2E%2E`, which
 * the worker decodes): encodeURIComponent leaves them as they are. A browser still resolves
 * `%2E` segments like dots (the URL standard), so see `isDotSegment`. */
export function enc(s: string): string {
  return s === "." ? "%2E" : s === ".." ? "%2E%2E" : encodeURIComponent(s);
}

/** A name no browser request can carry as a path segment: fetch resolves `.` and `..` (also
 * written `%2E`, `.%2E`...) before sending, so `/groups/..` asks for `/`. */
export function isDotSegment(s: string): boolean {
  return s === "." || s === "..";
}

// ---- shapes (fields marked optional are newer than some workers) ----

export interface Task {
  name: string;
  state: string;
  records_in: number;
  records_out: number;
  bytes_in: number;
  bytes_out: number;
  dead_letters: number;
  dropped?: number;
  restarts: number;
  last_error: string | null;
  lag_bytes: number | null;
  commits?: number;
  last_commit_ms?: number | null;
  commit_ms_avg?: number | null;
}

export interface Pipeline {
  name: string;
  file: string;
  state: string;
  tasks: Task[];
}

/** A persistent query (`GET /queries`); `status` is null while it is not running. */
export interface QueryDoc {
  id: string;
  sink: string;
  statement: string;
  failed_to_start?: string | null;
  status?: Task | null;
}

/** A source's committed position (any JSON) or a sink's next offset per partition. */
export interface OffsetEntry {
  task: string;
  partition?: number | null;
  offset: unknown;
}

export interface OffsetsDoc {
  pipeline: string;
  offsets: OffsetEntry[];
}

/** `POST /pipelines/validate`: what the file would deploy. */
export interface ValidationDoc {
  valid: boolean;
  name: string;
  topics: number;
  sources: number;
  sinks: number;
  statements: number;
}

export interface PipelinesDoc {
  pipelines: Pipeline[];
  broken_files: { file: string; error: string }[];
}

export interface TopicSummary {
  name: string;
  /** Newer workers: an internal topic (`__*`, `*-changelog`). */
  internal?: boolean;
  partitions: number;
  /** Older workers: end minus start offsets, under this name. */
  records?: number;
  /** Newer workers: the same count (transaction markers take offsets too). */
  offsets?: number;
  bytes: number;
}

export interface PartitionInfo {
  partition: number;
  log_start_offset: number;
  log_end_offset: number;
  high_watermark: number;
  last_stable_offset: number;
  [k: string]: unknown;
}

export interface TopicDoc {
  name: string;
  internal: boolean;
  partitions: PartitionInfo[];
  config: Record<string, { value: string; overridden: boolean } | string>;
}

export interface Header {
  key: string;
  value: string | null;
}

export interface LogRecord {
  topic?: string;
  partition: number;
  offset: number;
  timestamp: number;
  key: string | null;
  value: string | null;
  headers?: Header[];
}

export interface RecordsDoc {
  records: LogRecord[];
  next_offset: number;
}

export interface GroupSummary {
  group: string;
  state: string;
  members: number;
}

export interface GroupPartition {
  topic: string;
  partition: number;
  committed: number | null;
  log_end: number;
  lag: number | null;
  member: string | null;
}

export interface GroupDoc extends GroupSummary {
  partitions: GroupPartition[];
}

/** A statement's result: a message, or rows (with `columns` in the query's order from
 * newer workers; row objects' keys may come in any order). */
export type SqlResult = { message: string } | { rows: Record<string, unknown>[]; columns?: string[] };

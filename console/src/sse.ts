// Server-sent events over fetch (EventSource can neither POST nor send the bearer token): a
// parser fed with text chunks in any split, and a reader of an event stream.

import { request } from "./api";

export interface SseEvent {
  event: string;
  data: string;
}

/** An incremental parser of the text/event-stream format: lines end with CRLF, LF or CR;
 * `:` lines are comments (keep-alives); a blank line dispatches the event. */
export class SseParser {
  private buf = "";
  private event = "";
  private data: string[] = [];
  private hasData = false;

  constructor(private onEvent: (e: SseEvent) => void) {}

  push(chunk: string) {
    this.buf += chunk;
    let start = 0;
    for (;;) {
      const lf = this.buf.indexOf("\n", start);
      const cr = this.buf.indexOf("\r", start);
      let end: number;
      let next: number;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        // A CR at the end of the buffer may be the first half of a CRLF: wait for more.
        if (cr === this.buf.length - 1) break;
        end = cr;
        next = this.buf[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else if (lf >= 0) {
        end = lf;
        next = lf + 1;
      } else break;
      this.line(this.buf.slice(start, end));
      start = next;
    }
    this.buf = this.buf.slice(start);
  }

  /** The stream ended: a trailing CR ends its line; an event without its blank line is
   * dropped, as the standard says. */
  end() {
    if (this.buf.endsWith("\r")) {
      this.line(this.buf.slice(0, -1));
    }
    this.buf = "";
  }

  private line(line: string) {
    if (line === "") {
      if (this.hasData || this.event) {
        this.onEvent({ event: this.event || "message", data: this.data.join("\n") });
      }
      this.event = "";
      this.data = [];
      this.hasData = false;
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") {
      this.data.push(value);
      this.hasData = true;
    }
    // id and retry mean nothing to a one-shot query stream.
  }
}

/** Reads a server-sent-events response of `path` (fetch, so the bearer token goes along):
 * calls `onOpen` once the worker accepted it, then onEvent for each event until the stream
 * ends or `signal` aborts. Throws ApiError when the worker refuses (bad SQL, 404, 503...). */
export async function streamEvents(
  path: string,
  init: RequestInit,
  signal: AbortSignal,
  onEvent: (e: SseEvent) => void,
  onOpen?: () => void,
): Promise<void> {
  const headers = new Headers(init.headers);
  headers.set("Accept", "text/event-stream");
  const res = await request(path, { ...init, headers, signal });
  if (!res.body) throw new Error("the browser gave no response stream");
  onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser(onEvent);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.end();
  } finally {
    reader.releaseLock();
  }
}

/** Streams a push query (`POST /query`). */
export function streamQuery(sql: string, signal: AbortSignal, onEvent: (e: SseEvent) => void): Promise<void> {
  return streamEvents(
    "/query",
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ sql }) },
    signal,
    onEvent,
  );
}

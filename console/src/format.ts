// Formatting of numbers, bytes, times and record payloads.

const int = new Intl.NumberFormat("en-US");
const dec = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

export const DASH = "—";

export function n(v: number | null | undefined): string {
  return v == null ? DASH : int.format(v);
}

export function rate(v: number | null | undefined): string {
  return v == null ? DASH : dec.format(v);
}

export function bytes(v: number | null | undefined): string {
  if (v == null) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let x = v;
  let u = 0;
  while (Math.abs(x) >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${int.format(x)} B` : `${dec.format(x)} ${units[u]}`;
}

export function iso(ms: number | null | undefined): string {
  if (ms == null) return DASH;
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString();
}

/** "4 s ago", "3 min ago"... from a unix-ms time. */
export function ago(ms: number, now = Date.now()): string {
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${dec.format(s / 3600)} h ago`;
  return `${dec.format(s / 86400)} d ago`;
}

/** A record's key or value: JSON indented (every token's text as stored), other text as it is. */
export function pretty(text: string | null | undefined): { text: string; json: boolean } {
  if (text == null) return { text: "null", json: false };
  const t = text.trim();
  if (t.startsWith("{") || t.startsWith("[")) {
    try {
      JSON.parse(t); // only to tell JSON from other text: its values are not shown
      return { text: indentJson(t), json: true };
    } catch {
      /* not JSON */
    }
  }
  return { text, json: false };
}

const WS = " \t\n\r";

/** Indents valid JSON text like `JSON.stringify(v, null, 2)` without re-serialising it: every
 * string, number and literal is copied as written (big integers, `1.50`, `1e400`, escapes,
 * duplicate keys stay as they are); only the whitespace between tokens changes. */
export function indentJson(text: string, step = "  "): string {
  let out = "";
  let depth = 0;
  const nl = () => "\n" + step.repeat(depth);
  for (let i = 0; i < text.length; ) {
    const c = text[i];
    let j = i + 1;
    if (c === '"') {
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, ++j);
    } else if (c === "{" || c === "[") {
      while (WS.includes(text[j] ?? "x")) j++;
      if (text[j] === "}" || text[j] === "]") out += c + text[j++];
      else {
        depth++;
        out += c + nl();
      }
    } else if (c === "}" || c === "]") {
      depth--;
      out += nl() + c;
    } else if (c === ",") out += "," + nl();
    else if (c === ":") out += ": ";
    else if (!WS.includes(c)) {
      // a number or a literal: up to the next delimiter
      while (j < text.length && !`${WS},:{}[]"`.includes(text[j])) j++;
      out += text.slice(i, j);
    }
    i = j;
  }
  return out;
}

/** A cell of a SQL result: strings as they are, other values as JSON. */
export function cell(v: unknown): string {
  if (v === undefined) return "";
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

type RawJson = (text: string) => unknown;
const rawJSON = (JSON as unknown as { rawJSON?: RawJson }).rawJSON;
const isRawJSON = (JSON as unknown as { isRawJSON?: (v: unknown) => boolean }).isRawJSON;

/** JSON.parse keeping every number whose JavaScript value would print differently from the
 * text the worker sent (integers past 2^53, `1.0`, `1e400`...) as that text, where the browser
 * can (JSON.rawJSON): a source position's 64-bit hash or a BIGINT column shows as sent.
 * `JSON.stringify` (and so `cell`) writes such a number's text back as it was. */
export function parseExact(text: string): unknown {
  if (!rawJSON) return JSON.parse(text);
  const reviver = (_k: string, v: unknown, ctx?: { source?: string }) =>
    typeof v === "number" && ctx?.source != null && String(v) !== ctx.source ? rawJSON(ctx.source) : v;
  return JSON.parse(text, reviver as (k: string, v: unknown) => unknown);
}

/** A number of a parsed result: a JavaScript number or a number kept as its text. */
export function isNum(v: unknown): boolean {
  return typeof v === "number" || (isRawJSON?.(v) ?? false);
}

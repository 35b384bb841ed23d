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

/** A record's key or value: JSON pretty-printed, other text as it is. */
export function pretty(text: string | null | undefined): { text: string; json: boolean } {
  if (text == null) return { text: "null", json: false };
  const t = text.trim();
  if (t.startsWith("{") || t.startsWith("[")) {
    try {
      return { text: JSON.stringify(JSON.parse(t), null, 2), json: true };
    } catch {
      /* not JSON */
    }
  }
  return { text, json: false };
}

/** A cell of a SQL result: strings as they are, other values as JSON. */
export function cell(v: unknown): string {
  if (v === undefined) return "";
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

type RawJson = (text: string) => unknown;
const rawJSON = (JSON as unknown as { rawJSON?: RawJson }).rawJSON;

/** JSON.parse keeping integers past 2^53 exact where the browser can (JSON.rawJSON), so a
 * source position's 64-bit hash is shown as the worker sent it. */
export function parseExact(text: string): unknown {
  if (!rawJSON) return JSON.parse(text);
  const reviver = (_k: string, v: unknown, ctx?: { source?: string }) =>
    typeof v === "number" && !Number.isSafeInteger(v) && ctx?.source && /^-?\d+$/.test(ctx.source)
      ? rawJSON(ctx.source)
      : v;
  return JSON.parse(text, reviver as (k: string, v: unknown) => unknown);
}

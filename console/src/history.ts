// Client-side histories of polled counters, kept while the console is open (across page
// changes), for rates and small charts.

/** How long a series keeps its points. */
export const WINDOW_MS = 5 * 60 * 1000;

export interface Point {
  t: number;
  v: number;
}

const series = new Map<string, Point[]>();

/** Adds a point to series `key`, dropping the points older than the window. */
export function record(key: string, t: number, v: number) {
  let s = series.get(key);
  if (!s) {
    s = [];
    series.set(key, s);
  }
  const last = s[s.length - 1];
  if (last && last.t >= t) return;
  s.push({ t, v });
  while (s.length && s[0].t < t - WINDOW_MS) s.shift();
}

export function points(key: string): Point[] {
  return series.get(key) ?? [];
}

/** Per-second rates between successive points of a counter (a counter that went back, as
 * after a redeploy, gives no rate for that step). */
export function rates(key: string): Point[] {
  const s = points(key);
  const out: Point[] = [];
  for (let i = 1; i < s.length; i++) {
    const dt = (s[i].t - s[i - 1].t) / 1000;
    const dv = s[i].v - s[i - 1].v;
    if (dt > 0 && dv >= 0) out.push({ t: s[i].t, v: dv / dt });
  }
  return out;
}

/** The latest rate, if the last two points are close enough to be from one polling run. */
export function lastRate(key: string, maxGapMs = 10_000): number | null {
  const s = points(key);
  if (s.length < 2) return null;
  const a = s[s.length - 2];
  const b = s[s.length - 1];
  const dt = b.t - a.t;
  if (dt <= 0 || dt > maxGapMs || b.v < a.v) return null;
  return ((b.v - a.v) * 1000) / dt;
}

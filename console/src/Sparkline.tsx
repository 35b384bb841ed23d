// A small SVG line chart of one or two series over the last few minutes (at most the
// history's window).

import { WINDOW_MS, type Point } from "./history";

const MIN_SPAN_MS = 30_000;

export interface Line {
  points: Point[];
  className: string;
  label: string;
}

/** Lines share the y scale (0 to the largest value); x is time over the window, ending now.
 * A gap longer than `gapMs` (the console was elsewhere) breaks the line. */
export function Sparkline(props: {
  lines: Line[];
  now: number;
  width?: number;
  height?: number;
  gapMs?: number;
  testid?: string;
  unit?: string;
}) {
  const { lines, now, width = 160, height = 36, gapMs = 10_000, unit = "" } = props;
  // x spans the window, or less while the history is younger (at least 30 s), so a
  // fresh console shows its first points across the chart rather than at its right edge.
  let first = now;
  for (const l of lines) if (l.points.length) first = Math.min(first, l.points[0].t);
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first));
  const t0 = now - span;
  let max = 0;
  for (const l of lines) for (const p of l.points) if (p.t >= t0) max = Math.max(max, p.v);
  const top = max > 0 ? max : 1;
  const x = (t: number) => ((t - t0) / span) * (width - 2) + 1;
  const y = (v: number) => height - 2 - (v / top) * (height - 4);
  const paths = lines.map((l) => {
    let d = "";
    let prev: Point | null = null;
    for (const p of l.points) {
      if (p.t < t0) continue;
      const cmd = !prev || p.t - prev.t > gapMs ? "M" : "L";
      d += `${cmd}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      prev = p;
    }
    return { d, l };
  });
  const last = lines.map((l) => l.points[l.points.length - 1]?.v);
  const title =
    lines.map((l, i) => `${l.label}: ${last[i] == null ? "—" : last[i].toFixed(1)}${unit}`).join(", ") +
    ` (max ${max.toFixed(1)}${unit} over the last ${Math.round(span / 1000)} s)`;
  return (
    <svg
      class="spark"
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      data-testid={props.testid}
      role="img"
      aria-label={title}
    >
      <title>{title}</title>
      <line x1="0" x2={width} y1={height - 1.5} y2={height - 1.5} class="spark-axis" />
      {paths.map(({ d, l }) => (d ? <path d={d} class={l.className} /> : null))}
    </svg>
  );
}

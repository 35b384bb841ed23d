// SQL text and result helpers (no imports: unit-tested under Node).

/** True for a push query: EMIT CHANGES outside comments and string literals. */
export function isPush(sql: string): boolean {
  const bare = sql
    .replace(/'(?:[^']|'')*'/g, "''")
    .replace(/--[^\n]*/g, " ")
    .replace(/\/\*[\s\S]*?\*\//g, " ");
  return /\bEMIT\s+CHANGES\b/i.test(bare);
}

/** Column names: the union of the rows' keys, in order of first appearance. */
export function columnsOf(rows: Record<string, unknown>[], into: string[] = []): string[] {
  const seen = new Set(into);
  for (const r of rows) {
    for (const k of Object.keys(r)) {
      if (!seen.has(k)) {
        seen.add(k);
        into.push(k);
      }
    }
  }
  return into;
}

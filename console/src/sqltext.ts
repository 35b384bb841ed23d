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

/** `TERMINATE` of a persistent query: the id in backticks (a backtick in it doubled), since an
 * id holds its sink's name (`CSAS_EV-CLEAN_1`, spaces, `<`, `=`...). */
export function terminateSql(id: string): string {
  return `TERMINATE \`${id.replaceAll("`", "``")}\`;`;
}

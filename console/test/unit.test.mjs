// Unit tests of the console's pure parts (the SSE parser, SQL helpers, exact JSON), run by Node's test
// runner: `npm test`. The TypeScript sources are compiled in memory with Vite's transform.

import { readFileSync } from "node:fs";
import { test } from "node:test";
import assert from "node:assert/strict";
import { transformWithOxc } from "vite";

async function load(file, stubs = {}) {
  let src = readFileSync(new URL(`../src/${file}`, import.meta.url), "utf8");
  for (const [from, to] of Object.entries(stubs)) src = src.replace(from, to);
  const { code } = await transformWithOxc(src, file, { lang: "ts" });
  return import(`data:text/javascript;base64,${Buffer.from(code).toString("base64")}`);
}

const { SseParser } = await load("sse.ts", { 'import { request } from "./api";': "const request = null;" });
const { isPush, columnsOf } = await load("sqltext.ts");
const { parseExact } = await load("format.ts");

const STREAM =
  ': keep-alive\r\n\r\nevent: columns\r\ndata: ["A","B"]\r\n\r\nevent: row\ndata: {"A":1,\ndata: "B":2}\n\n' +
  ':\n\nevent: row\rdata: {"A":3}\r\revent: end\ndata:{"rows":2}\n\ndata: no blank line after it';
const EVENTS = [
  { event: "columns", data: '["A","B"]' },
  { event: "row", data: '{"A":1,\n"B":2}' },
  { event: "row", data: '{"A":3}' },
  { event: "end", data: '{"rows":2}' },
];

function parse(chunks) {
  const got = [];
  const p = new SseParser((e) => got.push(e));
  for (const c of chunks) p.push(c);
  p.end();
  return got;
}

test("SSE: events, multi-line data, comments, CRLF/CR/LF line ends", () => {
  assert.deepEqual(parse([STREAM]), EVENTS);
});

test("SSE: the same events however the stream is cut into chunks", () => {
  for (let i = 1; i < STREAM.length; i++) {
    for (let j = i; j < STREAM.length; j += 5) {
      const chunks = [STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)];
      assert.deepEqual(parse(chunks), EVENTS, `cut at ${i} and ${j}`);
    }
  }
  assert.deepEqual(parse([...STREAM]), EVENTS, "one character at a time");
});

test("SSE: a data line without a space after the colon, and an event without data", () => {
  assert.deepEqual(parse(["data:x\n\nevent: end\n\n"]), [
    { event: "message", data: "x" },
    { event: "end", data: "" },
  ]);
});

test("push queries are told by EMIT CHANGES outside comments and strings", () => {
  assert.equal(isPush("SELECT * FROM rides EMIT CHANGES;"), true);
  assert.equal(isPush("select *\nfrom rides\nemit   changes limit 3"), true);
  assert.equal(isPush("SELECT * FROM zone_fares;"), false);
  assert.equal(isPush("SELECT * FROM t WHERE s = 'EMIT CHANGES';"), false);
  assert.equal(isPush("-- EMIT CHANGES\nSELECT 1;"), false);
  assert.equal(isPush("/* EMIT CHANGES */ SHOW STREAMS;"), false);
});

test("columns are the union of the rows' keys, in order of first appearance", () => {
  assert.deepEqual(columnsOf([{ b: 1, a: 2 }, { c: 3, a: 4 }]), ["b", "a", "c"]);
  assert.deepEqual(columnsOf([{ x: 1, y: 2 }], ["y"]), ["y", "x"]);
});

test("offsets keep 64-bit integers exact where JSON.rawJSON exists", () => {
  const text = '{"offset":{"f":{"head_hash":18192642512675428494,"line":8,"x":-1.5e3}},"p":null}';
  const v = parseExact(text);
  assert.equal(v.offset.f.line, 8);
  assert.equal(v.p, null);
  if (JSON.rawJSON) assert.equal(JSON.stringify(v), '{"offset":{"f":{"head_hash":18192642512675428494,"line":8,"x":-1500}},"p":null}');
  else assert.deepEqual(v, JSON.parse(text));
});

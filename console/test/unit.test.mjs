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
const { isPush, columnsOf, terminateSql } = await load("sqltext.ts");
const { parseExact, indentJson, pretty } = await load("format.ts");
const { enc, isDotSegment, tokenProblem } = await load("api.ts", {
  'import { useEffect, useState } from "preact/hooks";': "const useEffect = null, useState = null;",
});

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

/** The text with the whitespace between JSON tokens removed (strings kept whole). */
const squeeze = (t) => t.replace(/"(?:[^"\\]|\\.)*"|[ \t\n\r]+/g, (m) => (m[0] === '"' ? m : ""));

test("the JSON indenter copies every token as written: big numbers, 1.50, 1e400", () => {
  const text = '{"id": 12345678901234567891, "amount": 0.1000000000000000055511151231257827, "price": 1.50, "x": 1e400}';
  assert.equal(
    indentJson(text),
    '{\n  "id": 12345678901234567891,\n  "amount": 0.1000000000000000055511151231257827,\n  "price": 1.50,\n  "x": 1e400\n}',
  );
  assert.deepEqual(pretty(text), { text: indentJson(text), json: true });
  assert.equal(indentJson("[9007199254740993]"), "[\n  9007199254740993\n]");
  assert.equal(indentJson("[-0, -1.5E+3, 1e-7, 0.0]"), "[\n  -0,\n  -1.5E+3,\n  1e-7,\n  0.0\n]");
});

test("the JSON indenter keeps duplicate keys", () => {
  assert.equal(indentJson('{"a": 1, "a": 2}'), '{\n  "a": 1,\n  "a": 2\n}');
  assert.equal(pretty('{"a":1,"a":2}').text, '{\n  "a": 1,\n  "a": 2\n}');
});

test("the JSON indenter lays out nested values as JSON.stringify(v, null, 2) does", () => {
  const cases = [
    '{"n":{"e":[],"o":{},"z":[1,[2,{"q":null}]]},"t":true,"f":false}',
    ' [ { } , [ ] , { "a" : [ 1 , 2 ] } ] ',
    '{\r\n\t"k":\t"v"\n}',
    "[]",
    "{}",
    '[[[[]]]]',
    '{"":""}',
  ];
  for (const c of cases) assert.equal(indentJson(c.trim()), JSON.stringify(JSON.parse(c), null, 2), c);
});

test("the JSON indenter copies strings as written: escapes, quotes, brackets, unicode", () => {
  const text = String.raw`{"s":"a\"b\\c\u00e9\ud83d\ude00 ü €","t":"{[,:]} \\","u":"\\\"","e":"😀\n"}`;
  const out = indentJson(text);
  assert.equal(
    out,
    '{\n  "s": ' + String.raw`"a\"b\\c\u00e9\ud83d\ude00 ü €"` + ',\n  "t": "{[,:]} \\\\",\n  "u": ' + String.raw`"\\\""` + ',\n  "e": "😀\\n"\n}',
  );
  assert.equal(squeeze(out), squeeze(text));
  assert.deepEqual(JSON.parse(out), JSON.parse(text));
});

test("pretty: JSON only when it parses, other text as it is", () => {
  assert.deepEqual(pretty("{not json"), { text: "{not json", json: false });
  assert.deepEqual(pretty('{"a":1} trailing'), { text: '{"a":1} trailing', json: false });
  assert.deepEqual(pretty("plain"), { text: "plain", json: false });
  assert.deepEqual(pretty("12345678901234567891"), { text: "12345678901234567891", json: false });
  assert.deepEqual(pretty(null), { text: "null", json: false });
  assert.deepEqual(pretty('  {"a":1}\n'), { text: '{\n  "a": 1\n}', json: true });
});

test("enc: path segments . and .. are percent-encoded; isDotSegment tells them", () => {
  assert.equal(enc("."), "%2E");
  assert.equal(enc(".."), "%2E%2E");
  assert.equal(enc("..."), "...");
  assert.equal(enc("a.b"), "a.b");
  assert.equal(enc("a/b c"), "a%2Fb%20c");
  assert.equal(enc("é?#"), "%C3%A9%3F%23");
  assert.equal(decodeURIComponent(enc("..")), "..");
  // Yet URLs resolve %2E segments like dots (the URL standard, as fetch does): hence
  // isDotSegment, for which the group page asks only GET /groups.
  assert.equal(new URL(`/groups/${enc("..")}`, "http://h/").pathname, "/");
  assert.equal(new URL(`/groups/${enc(".")}`, "http://h/").pathname, "/groups/");
  assert.equal(isDotSegment("."), true);
  assert.equal(isDotSegment(".."), true);
  for (const s of ["...", ".a", "a.", "", "%2E"]) assert.equal(isDotSegment(s), false, s);
});

test("TERMINATE quotes the query id with backticks", () => {
  assert.equal(terminateSql("CSAS_EV-CLEAN_1"), "TERMINATE `CSAS_EV-CLEAN_1`;");
  assert.equal(terminateSql("CSAS_A B<=C_2"), "TERMINATE `CSAS_A B<=C_2`;");
  assert.equal(terminateSql("CSAS_WE`IRD_1"), "TERMINATE `CSAS_WE``IRD_1`;");
  assert.equal(terminateSql("Q"), "TERMINATE `Q`;");
});

test("a token must be printable ASCII to go in a header", () => {
  for (const ok of ["s3cret", "a-b_c.d~e+f/g=", "with space", "!\"#$%&'()*,:;<>?@[\\]^`{|}"]) {
    assert.equal(tokenProblem(ok), null, ok);
    assert.doesNotThrow(() => new Headers().set("Authorization", `Bearer ${ok}`));
  }
  for (const bad of ["tök€", "tök", "€", "😀", "a\nb", "a\tb", "a\x7fb", "\u00a0", ""]) {
    assert.match(tokenProblem(bad), /token/, JSON.stringify(bad));
  }
  assert.match(tokenProblem("tök€"), /"ö" \(U\+00F6\)/);
  assert.match(tokenProblem("a\nb"), /control character \(U\+000A\)/);
  // What the check prevents: the browser refuses such a header outright.
  assert.throws(() => new Headers().set("Authorization", "Bearer tök€"));
});

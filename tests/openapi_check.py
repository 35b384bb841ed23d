"""Calls every route of a running Sluice worker and validates each answer against the
worker's own OpenAPI document (openapi-core), after validating the document itself
(openapi-spec-validator). Run by tests/tests/openapi.rs, which starts the worker.

Usage: openapi_check.py BASE_URL TOKEN

Prints one line per call; exits 1 naming every call whose answer does not match its schema
and every documented operation that no call reached.
"""

import json
import sys
import urllib.error
import urllib.request

from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest  # noqa: F401 (import check)
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator import validate

BASE, TOKEN = sys.argv[1].rstrip("/"), sys.argv[2]


def call(method, path, body=None, content_type=None, token=True, stream=False):
    req = urllib.request.Request(BASE + path, method=method, data=body)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", "Bearer " + TOKEN)
    try:
        resp = urllib.request.urlopen(req, timeout=30)
        status, headers = resp.status, resp.headers
        data = resp.read(4096) if stream else resp.read()
        resp.close()
    except urllib.error.HTTPError as e:
        status, headers, data = e.code, e.headers, e.read()
    return status, headers.get("Content-Type", ""), data


class Req:
    """The request as openapi-core's protocol wants it."""

    def __init__(self, method, path, query, content_type, body):
        self.host_url = BASE
        self.path = path
        self.full_url_pattern = BASE + path
        self.method = method.lower()
        self.parameters = RequestParameters(query=query, header={}, cookie={}, path={})
        self.content_type = content_type or ""
        self.body = body or b""


class Resp:
    def __init__(self, status, content_type, data):
        self.status_code = status
        self.content_type = content_type.split(";")[0]
        self.headers = {"Content-Type": content_type}
        # openapi-core decodes JSON itself; other media types (YAML, TOML, text) are
        # checked as the strings their schemas say.
        self.data = data if "json" in content_type else data.decode("utf-8", "replace")


spec_dict = json.loads(call("GET", "/openapi.json", token=False)[2])
try:
    validate(spec_dict)
except Exception as e:  # noqa: BLE001 (the message, not the whole document)
    sys.exit(f"FAIL the document is not valid OpenAPI: {type(e).__name__}: {str(e)[:500]}")
print("ok   the document is valid OpenAPI", spec_dict["openapi"])
api = OpenAPI.from_dict(spec_dict)

documented = {
    (m.upper(), p)
    for p, ops in spec_dict["paths"].items()
    for m in ops
    if m in ("get", "put", "post", "delete", "patch")
}
reached = set()
failures = []

TOML = b"""
[[topics]]
name = "checked"
partitions = 2

[[sources]]
name = "checked-http"
topic = "checked"
http = { key-field = "id" }

[[sinks]]
name = "checked-files"
topic = "checked"
file = { path = "checked-out", format = "envelope" }
"""


def check(method, template, path=None, query="", body=None, content_type=None,
          expect=None, token=True, stream=False):
    path = path or template
    status, ctype, data = call(method, path + (("?" + query) if query else ""), body,
                               content_type, token, stream)
    reached.add((method, template))
    q = dict(kv.split("=", 1) for kv in query.split("&") if kv)
    try:
        if expect is not None and status != expect:
            raise AssertionError(f"status {status}, expected {expect}: {data[:300]!r}")
        if "text/event-stream" not in ctype:
            api.validate_response(Req(method, path, q, content_type, body), Resp(status, ctype, data))
        print(f"ok   {method} {path} {status}")
    except Exception as e:  # noqa: BLE001 (report and go on)
        failures.append(f"{method} {path} -> {status}: {e}")
        print(f"FAIL {method} {path} {status}: {e}")
    return status, data


check("GET", "/health", token=False, expect=200)
check("GET", "/openapi.yaml", token=False, expect=200)
check("GET", "/openapi.json", token=False, expect=200)
check("GET", "/", token=False, expect=200)
check("GET", "/metrics", expect=200)
check("GET", "/pipelines", expect=401, token=False)
check("POST", "/pipelines/validate", query="name=checked", body=TOML, content_type="application/toml", expect=200)
check("POST", "/pipelines/validate", query="name=checked", body=b"[[sources]\n", content_type="application/toml", expect=400)
check("PUT", "/pipelines/{name}", "/pipelines/checked", body=TOML, content_type="application/toml", expect=200)
check("PUT", "/pipelines/{name}", "/pipelines/checked", body=b"name = \n", content_type="application/toml", expect=400)
check("GET", "/pipelines", expect=200)
check("GET", "/pipelines/{name}", "/pipelines/checked", expect=200)
check("GET", "/pipelines/{name}", "/pipelines/nope", expect=404)
check("GET", "/pipelines/{name}/config", "/pipelines/checked/config", expect=200)
check("POST", "/ingest/{topic}", "/ingest/checked", body=b'{"id": "a", "n": 1}', content_type="application/json", expect=200)
check("POST", "/ingest/{topic}", "/ingest/checked", body=b'{"id": ', content_type="application/json", expect=400)
check("POST", "/ingest/{topic}", "/ingest/nope", body=b'{}', content_type="application/json", expect=404)
check("POST", "/pipelines/{name}/tasks/{task}/restart", "/pipelines/checked/tasks/sink%20checked-files/restart", expect=200)
check("POST", "/pipelines/{name}/tasks/{task}/restart", "/pipelines/checked/tasks/nope/restart", expect=404)
check("GET", "/pipelines/{name}/offsets", "/pipelines/checked/offsets", expect=200)
check("DELETE", "/pipelines/{name}/offsets", "/pipelines/checked/offsets", expect=409)
check("POST", "/pipelines/{name}/{action}", "/pipelines/checked/pause", expect=200)
check("DELETE", "/pipelines/{name}/offsets", "/pipelines/checked/offsets", expect=200)
check("POST", "/pipelines/{name}/{action}", "/pipelines/checked/resume", expect=200)
check("POST", "/pipelines/{name}/{action}", "/pipelines/checked/jump", expect=404)
check("GET", "/topics", expect=200)
check("GET", "/topics", query="all=true", expect=200)
check("POST", "/topics", body=b'{"name": "made", "partitions": 2, "config": {"retention.ms": "60000"}}', content_type="application/json", expect=201)
check("POST", "/topics", body=b'{"name": "made"}', content_type="application/json", expect=409)
check("POST", "/topics", body=b'{"name": "__x"}', content_type="application/json", expect=403)
check("POST", "/topics", body=b'name=made', content_type="text/plain", expect=415)
check("GET", "/topics/{name}", "/topics/made", expect=200)
check("GET", "/topics/{name}", "/topics/nope", expect=404)
check("POST", "/topics/{name}/records", "/topics/made/records",
      body=b'{"key": "k", "value": {"a": 1}, "headers": {"h": "v"}}\n{"value": "plain"}\n',
      content_type="application/x-ndjson", expect=200)
check("POST", "/topics/{name}/records", "/topics/made/records", body=b'{nope\n', content_type="application/x-ndjson", expect=400)
check("GET", "/topics/{name}/records", "/topics/made/records", query="partition=0&offset=0&limit=10", expect=200)
check("GET", "/topics/{name}/records", "/topics/made/records", query="partition=9", expect=404)
check("GET", "/topics/{name}/consume", "/topics/made/consume", query="from_beginning=true&max_messages=1", expect=200, stream=True)
check("GET", "/topics/{name}/consume", "/topics/made/consume", query="group=g2&from_beginning=true&max_messages=1", expect=200, stream=True)
check("POST", "/topics/{name}/consume/{session}/commit", "/topics/made/consume/999/commit",
      body=b'{"offsets": [{"partition": 0, "offset": 1}]}', content_type="application/json", expect=404)
check("GET", "/groups", expect=200)
# A worker alone: 404 with the reason (the 200 answer is exercised by tests/tests/cluster.rs).
check("GET", "/cluster", expect=404)
check("GET", "/groups/{group}", "/groups/nope", expect=404)
check("POST", "/groups/{group}/reset-offsets", "/groups/g1/reset-offsets",
      body=b'{"topic": "made", "to_earliest": true, "execute": true}', content_type="application/json", expect=200)
check("POST", "/groups/{group}/reset-offsets", "/groups/g1/reset-offsets",
      body=b'{"topic": "made"}', content_type="application/json", expect=400)
check("GET", "/groups/{group}", "/groups/g1", expect=200)
check("DELETE", "/groups/{group}", "/groups/g1", expect=200)
check("DELETE", "/groups/{group}", "/groups/g1", expect=404)
check("POST", "/sql", body=b"CREATE STREAM checked_s (id VARCHAR KEY, n INT) WITH (topic = 'checked');",
      content_type="text/plain", expect=200)
check("POST", "/sql", body=json.dumps({"sql": "SHOW STREAMS; DESCRIBE checked_s;"}).encode(),
      content_type="application/json", expect=200)
check("POST", "/sql", body=b'{"foo": 1}', content_type="application/json", expect=400)
check("POST", "/sql", body=b"", content_type="text/plain", expect=400)
check("POST", "/sql", body=b"SELEKT 1;", content_type="text/plain", expect=400)
check("POST", "/query", body=b"SELECT * FROM checked_s EMIT CHANGES LIMIT 1;", content_type="text/plain",
      expect=200, stream=True)
check("POST", "/query", body=b"SHOW STREAMS;", content_type="text/plain", expect=400)
check("GET", "/queries", expect=200)
check("DELETE", "/topics/{name}", "/topics/made", expect=200)
check("DELETE", "/topics/{name}", "/topics/__consumer_offsets", expect=403)
check("DELETE", "/pipelines/{name}", "/pipelines/checked", expect=200)
check("DELETE", "/pipelines/{name}", "/pipelines/checked", expect=404)
# Not in the document: JSON errors all the same.
for method, path in (("GET", "/nope"), ("DELETE", "/health")):
    status, ctype, data = call(method, path)
    ok = status in (404, 405) and ctype.startswith("application/json") and "message" in json.loads(data)
    print(("ok  " if ok else "FAIL") + f" {method} {path} {status} {data[:120]!r}")
    if not ok:
        failures.append(f"{method} {path}: {status} {ctype} {data[:200]!r}")

missed = sorted(documented - reached)
for m in missed:
    failures.append(f"documented but never called: {m[0]} {m[1]}")
print(f"{len(reached)} operations called, {len(failures)} failure(s)")
for f in failures:
    print("FAIL", f)
sys.exit(1 if failures else 0)

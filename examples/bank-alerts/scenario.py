#!/usr/bin/env python3
"""The bank-alerts scenario: its SQL, the alerts it must produce, and a checker.

    scenario.py sql PHASE [PAUSE]  print the SQL of a phase (seed, live, change, burst, bulk, tick),
                                   with SELECT pg_sleep(PAUSE) after each transaction
    scenario.py expected           print the expected alerts, one JSON object per line
                                   (what expected-alerts.jsonl holds)
    scenario.py check ES_URL HOOK_FILE [EXPECTED]
                                   compare the `alerts` index and the webhook log with them

Every transaction has an explicit created_at, so the 10-minute windows are known in advance;
thresholds apply in commit order (each transaction sees the thresholds committed before it).
The oracle below recomputes both rules from the same rows; run-scenario.sh drives the phases.
"""
import json
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal

BASE = datetime(2026, 1, 5, 9, 0, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=10)
GRACE = timedelta(minutes=1)

CUSTOMERS = [  # id, name, alert_threshold, window_limit
    (1, "Ada Lovelace", "1000.00", "3000.00"),
    (2, "Bruno Diaz", "500.00", "1500.00"),
    (3, "Chen Wei", "2500.00", "5000.00"),
] + [(i, f"Bulk Customer {i}", "900.00", "9000.00") for i in range(4, 10)]


def at(seconds):
    return BASE + timedelta(seconds=seconds)


def bulk_rows():
    rows = []
    for i in range(360):
        amount = "950.00" if i % 10 == 7 else f"{100 + (i * 37) % 400}.{(i * 13) % 100:02d}"
        rows.append((4 + i % 6, amount, "EUR", f"Shop {i % 17}", at(14 * 60 + 3 * i)))
    return rows


# Each phase: a list of PostgreSQL transactions; each is a list of operations:
# ("tx", customer_id, amount, currency, merchant, created_at) or ("set", id, threshold, window_limit).
PHASES = {
    "seed": [
        [("customer",) + c for c in CUSTOMERS],
        [("tx", 1, "250.00", "EUR", "Cafe Luna", at(5))],
        [("tx", 2, "750.00", "EUR", "Gadget Hub", at(60))],
    ],
    "live": [
        [("tx", 1, "1000.00", "EUR", "Air Tickets", at(120))],  # equal to the threshold: no alert
        [("tx", 1, "1000.01", "EUR", "Air Tickets", at(180))],  # above: alert
        [("tx", 3, "2400.00", "EUR", "Furniture Co", at(240))],
        [("tx", 2, "499.99", "EUR", "Grocer", at(300))],
    ],
    "change": [
        [("set", 1, "200.00", "3000.00")],  # Ada lowers her threshold
        [("set", 2, "800.00", "1500.00")],  # Bruno raises his
        [("tx", 1, "300.00", "EUR", "Bookshop", at(360))],  # alert only under the new threshold
        [("tx", 2, "750.00", "EUR", "Gadget Hub", at(420))],  # alerted before the change; not now
    ],
    "burst": [  # one PostgreSQL transaction of three rows
        [("tx", 3, "2600.00", "EUR", "Jeweller", at(660)),
         ("tx", 3, "2600.00", "EUR", "Jeweller", at(720)),
         ("tx", 1, "150.00", "EUR", "Cafe Luna", at(780))],
    ],
    "bulk": [[("tx",) + r] for r in bulk_rows()],
    # Moves the newest created_at past 09:41, so every window up to [09:30, 09:40) closes.
    "tick": [[("tx", 1, "10.00", "EUR", "Tick", at(50 * 60))]],
}
ORDER = ["seed", "live", "change", "burst", "bulk", "tick"]


def lit(ts):
    return "'" + ts.strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def sql(phase, pause=None):
    out = []
    for txn in PHASES[phase]:
        out.append("BEGIN;")
        for op in txn:
            if op[0] == "customer":
                _, i, name, thr, wl = op
                out.append(f"INSERT INTO customers (id, name, alert_threshold, window_limit) "
                           f"VALUES ({i}, '{name}', {thr}, {wl});")
            elif op[0] == "set":
                _, i, thr, wl = op
                out.append(f"UPDATE customers SET alert_threshold = {thr}, window_limit = {wl}, "
                           f"updated_at = now() WHERE id = {i};")
            else:
                _, c, amount, cur, merchant, ts = op
                out.append(f"INSERT INTO transactions (customer_id, amount, currency, merchant, created_at) "
                           f"VALUES ({c}, {amount}, '{cur}', '{merchant}', {lit(ts)});")
        out.append("COMMIT;")
        if pause:
            out.append(f"SELECT pg_sleep({pause});")
    return "\n".join(out) + "\n"


def iso(ts):
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def expected():
    """Both rules over every phase, in commit order."""
    limits = {}
    alerts = []
    windows = {}  # (customer, window start) -> [sum, count, limit, currency, last created_at]
    emitted = set()
    stream_time = None
    next_id = 1

    def close(now):
        for (cust, ws), (total, n, lim, cur, last) in sorted(windows.items(), key=lambda kv: kv[0][1]):
            if (cust, ws) in emitted or now < ws + WINDOW + GRACE:
                continue
            emitted.add((cust, ws))
            if total > lim:
                ms = int(ws.timestamp() * 1000)
                alerts.append({
                    "alert_id": f"sum-{cust}-{ms}", "reason": "sum over 10 minutes",
                    "customer_id": cust, "customer_name": limits[cust][0], "transaction_id": None,
                    "amount": total, "threshold": lim, "currency": cur, "merchant": None,
                    "created_at": iso(last), "tx_count": n,
                    "window_start": iso(ws), "window_end": iso(ws + WINDOW),
                })

    for phase in ORDER:
        for txn in PHASES[phase]:
            for op in txn:
                if op[0] == "customer":
                    limits[op[1]] = (op[2], Decimal(op[3]), Decimal(op[4]))
                elif op[0] == "set":
                    limits[op[1]] = (limits[op[1]][0], Decimal(op[2]), Decimal(op[3]))
                else:
                    _, c, amount, cur, merchant, ts = op
                    tid, next_id = next_id, next_id + 1
                    name, thr, wl = limits[c]
                    amount = Decimal(amount)
                    if amount > thr:
                        alerts.append({
                            "alert_id": f"tx-{tid}", "reason": "over threshold",
                            "customer_id": c, "customer_name": name, "transaction_id": tid,
                            "amount": amount, "threshold": thr, "currency": cur,
                            "merchant": merchant, "created_at": iso(ts), "tx_count": None,
                            "window_start": None, "window_end": None,
                        })
                    ws = BASE + WINDOW * ((ts - BASE) // WINDOW)
                    assert ws + WINDOW + GRACE > (stream_time or ts), "scenario would be late"
                    w = windows.setdefault((c, ws), [Decimal(0), 0, wl, cur, ts])
                    w[0] += amount
                    w[1] += 1
                    w[2], w[3], w[4] = wl, cur, ts
                    stream_time = max(stream_time or ts, ts)
                    close(stream_time)
    return alerts


def dumps(alert):
    def val(v):
        if isinstance(v, Decimal):
            return str(v)
        return json.dumps(v)
    return "{" + ", ".join(f"{json.dumps(k)}: {val(v)}" for k, v in alert.items()) + "}"


def norm(doc):
    return {k: (Decimal(str(v)) if isinstance(v, (float, int, Decimal)) and not isinstance(v, bool) else v)
            for k, v in doc.items()}


def check(es_url, hook_file, expected_file=None):
    if expected_file:
        with open(expected_file) as f:
            want = [json.loads(line, parse_float=Decimal) for line in f if line.strip()]
    else:
        want = [json.loads(dumps(a), parse_float=Decimal) for a in expected()]
    want = {a["alert_id"]: norm(a) for a in want}
    ok = True

    # Elasticsearch: one document per alert id, equal to the alert.
    with urllib.request.urlopen(f"{es_url}/alerts/_search?size=10000") as r:
        hits = json.loads(r.read(), parse_float=Decimal)["hits"]["hits"]
    got = {h["_id"]: norm(h["_source"]) for h in hits}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    print(f"elasticsearch: {len(got)} documents, expected {len(want)}; "
          f"missing {missing}, unexpected {extra}, different {wrong}")
    for k in wrong[:5]:
        print(f"  {k}: want {want[k]}\n  {' ' * len(k)}  got  {got[k]}")
    ok &= not (missing or extra or wrong)

    # Webhook: every alert arrived; repeats reported (same key, or another key).
    with open(hook_file) as f:
        reqs = [json.loads(line, parse_float=Decimal) for line in f if line.strip()]
    by_alert = {}
    for r in reqs:
        by_alert.setdefault(r["body"]["alert_id"], []).append(r)
    missing = sorted(set(want) - set(by_alert))
    extra = sorted(set(by_alert) - set(want))
    wrong = sorted(k for k in set(want) & set(by_alert) if any(norm(r["body"]) != want[k] for r in by_alert[k]))
    same_key = sorted(k for k, rs in by_alert.items() if len(rs) > 1 and len({r["idempotency_key"] for r in rs}) == 1)
    other_key = sorted(k for k, rs in by_alert.items() if len({r["idempotency_key"] for r in rs}) > 1)
    print(f"webhook: {len(reqs)} requests for {len(by_alert)} alerts, expected {len(want)}; "
          f"missing {missing}, unexpected {extra}, different {wrong}; "
          f"repeated with the same Idempotency-Key: {same_key}; under another key: {other_key}")
    ok &= not (missing or extra or wrong or other_key)
    print("OK" if ok else "MISMATCH")
    return ok


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "sql":
        pause = sys.argv[3] if len(sys.argv) > 3 else None
        sys.stdout.write(sql(sys.argv[2], pause))
    elif cmd == "expected":
        for a in expected():
            print(dumps(a))
    elif cmd == "check":
        sys.exit(0 if check(*sys.argv[2:5]) else 1)
    else:
        sys.exit(__doc__)

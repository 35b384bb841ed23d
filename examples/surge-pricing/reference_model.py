#!/usr/bin/env python3
"""An independent model of surge.sql over the scripted files, written from the README's
window semantics (not from Sluice's code), to check expected-surge.jsonl:

  python3 reference_model.py [DIR]            # prints the surge rows, sorted by zone_window
  python3 reference_model.py [DIR] --check expected-surge.jsonl

Semantics modelled:
- hopping windows SIZE 5 min ADVANCE 1 min: starts are multiples of 60 s with
  start <= t < start + 300 s (none before the epoch);
- stream time per query = the largest event time seen so far, in the topic's order (each
  input topic has one partition); a record updates only the windows with
  start + size + grace > stream time (grace 60 s); with none open it is a dead letter;
- a driver's state in a window is its ping with the greatest (event time, status, zone);
- supply = drivers whose state is 'free', per (zone, window); a row exists while > 0;
- demand = requests per (zone, window);
- a surge row exists when demand > 0 or supply > 0; band = 6 when supply is 0, else
  min(6, floor(2 * demand / supply)); multiplier = min(rule[band] or 1.0, zone cap).
"""
import json
import sys
from datetime import datetime

SIZE, ADVANCE, GRACE = 300_000, 60_000, 60_000


def ms(ts):
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def starts(t):
    first = max(0, (t - SIZE) // ADVANCE * ADVANCE + ADVANCE)
    return [s for s in range(first, t + 1, ADVANCE) if s <= t < s + SIZE]


def windowed(rows, key, value, late):
    """{(key, start): [values]} for the records each window took, in arrival order."""
    out, stream_time = {}, None
    for r in rows:
        t = ms(r["ts"])
        stream_time = t if stream_time is None else max(stream_time, t)
        open_ = [s for s in starts(t) if s + SIZE + GRACE > stream_time]
        if not open_:
            late.append(r)
        for s in open_:
            out.setdefault((key(r), s), []).append(value(r, t))
    return out


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def model(d):
    zones = {z["zone"]: z for z in load(f"{d}/zones.jsonl")}
    rules = {r["band"]: r for r in load(f"{d}/rules.jsonl")}
    late = []
    demand = {}
    for (zone, s), v in windowed(load(f"{d}/requests.jsonl"), lambda r: r["zone"],
                                  lambda r, t: 1, late).items():
        demand[(zone, s)] = len(v)
    supply = {}
    for (drv, s), pings in windowed(load(f"{d}/pings.jsonl"), lambda r: r["driver_id"],
                                    lambda r, t: (t, r["status"], r["zone"]), late).items():
        t, status, zone = max(pings)
        if status == "free":
            supply[(zone, s)] = supply.get((zone, s), 0) + 1
    rows = []
    for zone, s in sorted(set(demand) | set(supply)):
        req, free = demand.get((zone, s), 0), supply.get((zone, s), 0)
        band = 6 if free == 0 else min(6, (2 * req) // free)
        mult = rules[band]["multiplier"] if band in rules else 1.0
        z = zones.get(zone)
        if z is not None:
            mult = min(mult, z["max_multiplier"])
        rows.append({
            "ZONE_WINDOW": f"{zone}|{s}", "ZONE": zone,
            "ZONE_NAME": z and z["name"], "CITY": z and z["city"],
            "WINDOW_START": s, "WINDOW_END": s + SIZE, "REQUESTS": req, "FREE_DRIVERS": free,
            "RATIO": None if free == 0 else round(req / free + 1e-9, 2),
            "BAND": band, "MULTIPLIER": mult,
        })
    return sorted(rows, key=lambda r: r["ZONE_WINDOW"]), late


def main():
    args = sys.argv[1:]
    d = args[0] if args and not args[0].startswith("--") else "."
    rows, late = model(d)
    if "--check" in args:
        expected = load(args[args.index("--check") + 1])
        got = {r["ZONE_WINDOW"]: r for r in expected}
        want = {r["ZONE_WINDOW"]: r for r in rows}
        bad = 0
        for k in sorted(set(got) | set(want)):
            if got.get(k) != want.get(k):
                bad += 1
                print(f"DIFF {k}\n  file:  {got.get(k)}\n  model: {want.get(k)}")
        print(f"{len(want)} model rows, {len(got)} file rows, {bad} differences; "
              f"late (dead letters): {[r['ts'] for r in late]}")
        sys.exit(1 if bad else 0)
    for r in rows:
        print(json.dumps(r, separators=(",", ":")))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the scripted hour (08:00:00-08:59:59 UTC on 2026-11-23) as JSON lines, in the
order the events ARRIVE (which is event-time order except for two late pings):

  zones.jsonl     4 zones          key: zone
  rules.jsonl     7 surge bands    key: band
  requests.jsonl  ride requests    key: request_id
  pings.jsonl     driver pings     key: driver_id (one per driver per minute, at second 5*i)

Deterministic: no randomness. Run: python3 make_hour.py [OUT_DIR] (default: this folder).
The story (minutes after 08:00):
  downtown  quiet, then a rush 15-34 while its four drivers are busy and d04 goes offline at 25
  airport   a flight lands: 2 requests/min at 35-49 while d05 is busy 36-47
  stadium   the game ends: 4 requests/min from 45; d09 and d10 drive over (44, 46)
  harbor    steady, never short of drivers
Late pings:
  d07 (stadium) drives through a tunnel: no pings at 30 and 31. Its 08:30:35 'free' ping
      (rider dropped off) arrives after everyone's minute-32 pings (stream time 08:32:50),
      after its own on-time 08:32:35 'busy' ping (next rider). Grace is 1 minute, so of its
      windows 08:26..08:30 window 08:26 (closed at 08:32:00) misses it, 08:27 takes it (d07
      free there), and in 08:28 the later 08:32:35 'busy' ping stays the latest by event
      time (LATEST_BY_OFFSET would wrongly count d07 free there: multiplier 1.2, not 2.5).
  d08 (harbor) a stale 08:10:55 'busy' ping replayed at 08:45:50, long after grace: a dead
      letter in surge_driver_window.dlq; d08 stays free in 08:06..08:10.
"""
import json
import os
import sys
from datetime import datetime, timedelta, timezone

BASE = datetime(2026, 11, 23, 8, 0, 0, tzinfo=timezone.utc)
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))


def iso(minute, second):
    return (BASE + timedelta(minutes=minute, seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")


ZONES = [
    {"zone": "downtown", "name": "Downtown", "city": "Metro", "max_multiplier": 2.5},
    {"zone": "airport", "name": "Airport", "city": "Metro", "max_multiplier": 2.0},
    {"zone": "stadium", "name": "Stadium", "city": "Metro", "max_multiplier": 3.0},
    {"zone": "harbor", "name": "Harbor", "city": "Metro", "max_multiplier": 1.5},
]

MULTIPLIERS = [1.0, 1.0, 1.2, 1.5, 1.8, 2.2, 2.5]
RULES = [{"band": b, "min_ratio": b / 2, "multiplier": m} for b, m in enumerate(MULTIPLIERS)]


def demand(zone, m):
    """Requests of a zone in minute m (0..59)."""
    if zone == "downtown":
        if 15 <= m < 35:
            return 3
        return 1 if m % 2 == 0 else 0
    if zone == "airport":
        if 35 <= m < 50:
            return 2
        return 1 if m % 4 == 0 else 0
    if zone == "stadium":
        if m >= 45:
            return 4
        return 1 if m % 10 == 0 else 0
    if zone == "harbor":
        return 1 if m % 5 == 0 else 0
    raise ValueError(zone)


def driver(d, m):
    """(zone, status) of driver d's ping in minute m, or None for no ping."""
    if d == "d01":
        return ("downtown", "busy" if 18 <= m < 32 else "free")
    if d == "d02":
        return ("downtown", "busy" if 20 <= m < 40 else "free")
    if d == "d03":
        return ("downtown", "busy" if 15 <= m < 35 else "free")
    if d == "d04":
        if m < 25:
            return ("downtown", "free")
        return ("downtown", "offline") if m == 25 else None
    if d == "d05":
        return ("airport", "busy" if 36 <= m < 48 else "free")
    if d == "d06":
        return ("airport", "free")
    if d == "d07":
        if m in (30, 31):
            return None  # in the tunnel; minute 30's ping arrives late (LATE below)
        if 20 <= m < 30 or m == 32 or m >= 47:
            return ("stadium", "busy")
        return ("stadium", "free")
    if d == "d08":
        return ("harbor", "free")
    if d == "d09":
        if m < 44:
            return ("harbor", "free")
        return ("stadium", "busy" if m >= 50 else "free")
    if d == "d10":
        if m < 46:
            return ("airport", "free")
        return ("stadium", "free")
    raise ValueError(d)


DRIVERS = [f"d{i:02d}" for i in range(1, 11)]
SECOND = {d: 5 * (i + 1) for i, d in enumerate(DRIVERS)}  # d01 :05 ... d10 :50

# Late pings: (arrive after the pings of this minute, the ping).
LATE = [
    (32, {"driver_id": "d07", "zone": "stadium", "status": "free", "ts": iso(30, 35)}),
    (45, {"driver_id": "d08", "zone": "harbor", "status": "busy", "ts": iso(10, 55)}),
]


def main():
    requests = []
    n = 0
    for m in range(60):
        minute = []
        for zone in ("downtown", "airport", "stadium", "harbor"):
            k = demand(zone, m)
            for j in range(k):
                minute.append((int((j + 0.5) * 60 / k), zone))
        for second, zone in sorted(minute):
            n += 1
            requests.append({"request_id": f"r{n:04d}", "rider_id": f"u{(n * 7) % 97:03d}",
                             "zone": zone, "ts": iso(m, second)})
    pings = []
    for m in range(60):
        for d in DRIVERS:
            p = driver(d, m)
            if p is not None:
                pings.append({"driver_id": d, "zone": p[0], "status": p[1], "ts": iso(m, SECOND[d])})
        for after, ping in LATE:
            if after == m:
                pings.append(ping)
    for name, rows in (("zones", ZONES), ("rules", RULES), ("requests", requests), ("pings", pings)):
        with open(os.path.join(OUT, f"{name}.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
        print(f"{name}.jsonl: {len(rows)} lines")


if __name__ == "__main__":
    main()

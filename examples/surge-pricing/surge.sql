-- Surge pricing: demand (ride requests) and supply (free drivers) per zone over 5-minute
-- windows that advance every minute, a band from their ratio, a multiplier from the
-- operator-owned rule table, capped per zone. Result: the table SURGE, keyed by
-- <zone>|<window start ms> (e.g. downtown|1795422000000), on the topic surge.
--
-- Run it with: sluice sql -f examples/surge-pricing/surge.sql (or through pipeline.toml).
-- Every statement is IF NOT EXISTS so a redeploy keeps what a previous run made.
-- Why it has six queries instead of two (the engine cannot join windowed tables, nor
-- tables with two key columns): see DESIGN-NOTES.md.

-- ---------------------------------------------------------------- inputs
-- One partition each: stream time (and so what is late) then depends on the order of each
-- topic alone, which keeps replays exact. See DESIGN-NOTES.md before adding partitions.
CREATE STREAM IF NOT EXISTS ride_requests (
    request_id VARCHAR KEY,
    rider_id   VARCHAR,
    zone       VARCHAR,
    ts         VARCHAR            -- ISO-8601 UTC event time, e.g. 2026-11-23T08:15:30Z
  ) WITH (topic = 'ride_requests', partitions = 1, timestamp = 'ts');

CREATE STREAM IF NOT EXISTS driver_pings (
    driver_id VARCHAR KEY,
    zone      VARCHAR,
    status    VARCHAR,            -- free, busy or offline
    ts        VARCHAR
  ) WITH (topic = 'driver_pings', partitions = 1, timestamp = 'ts');

CREATE TABLE IF NOT EXISTS zones (
    zone           VARCHAR PRIMARY KEY,
    name           VARCHAR,
    city           VARCHAR,
    max_multiplier DOUBLE         -- per-zone cap on the multiplier
  ) WITH (topic = 'zones', partitions = 1);

-- band b covers demand/supply ratios [b/2, (b+1)/2), band 6 is ratio >= 3, or requests
-- with no free driver at all. Operators change a multiplier by producing a new row for its
-- band: every surge row of that band is recomputed at once (also past windows).
CREATE TABLE IF NOT EXISTS surge_rules (
    band       INT PRIMARY KEY,
    min_ratio  DOUBLE,            -- documentation only: band / 2
    multiplier DOUBLE
  ) WITH (topic = 'surge_rules', partitions = 1);

-- ---------------------------------------------------------------- supply
-- The latest ping of each driver per window, by EVENT time: MAX over <13-digit ms>|status|zone.
-- (LATEST_BY_OFFSET would take a late ping, which arrives last, as the latest.)
CREATE TABLE IF NOT EXISTS surge_driver_window WITH (topic = 'surge_driver_window') AS
  SELECT driver_id,
         MAX(CONCAT(LPAD(CAST(ROWTIME AS VARCHAR), 13, '0'), '|', status, '|', zone)) AS latest_ping,
         SPLIT(MAX(CONCAT(LPAD(CAST(ROWTIME AS VARCHAR), 13, '0'), '|', status, '|', zone)), '|')[2] AS status,
         SPLIT(MAX(CONCAT(LPAD(CAST(ROWTIME AS VARCHAR), 13, '0'), '|', status, '|', zone)), '|')[3] AS zone
  FROM driver_pings
  WINDOW HOPPING (SIZE 5 MINUTES, ADVANCE BY 1 MINUTE, GRACE PERIOD 1 MINUTE)
  GROUP BY driver_id;

-- Free drivers per zone and window: re-aggregates the windowed table (a driver moving zones
-- or going busy/offline is retracted from its old group). HAVING deletes emptied groups.
CREATE TABLE IF NOT EXISTS surge_supply WITH (topic = 'surge_supply') AS
  SELECT CONCAT(zone, '|', CAST(WINDOWSTART AS VARCHAR)) AS zone_window,
         COUNT(*) AS free_drivers
  FROM surge_driver_window
  WHERE status = 'free'
  GROUP BY CONCAT(zone, '|', CAST(WINDOWSTART AS VARCHAR))
  HAVING COUNT(*) > 0;

-- ---------------------------------------------------------------- demand
CREATE TABLE IF NOT EXISTS surge_demand_window WITH (topic = 'surge_demand_window') AS
  SELECT zone, COUNT(*) AS requests
  FROM ride_requests
  WINDOW HOPPING (SIZE 5 MINUTES, ADVANCE BY 1 MINUTE, GRACE PERIOD 1 MINUTE)
  GROUP BY zone;

-- The same windows re-keyed as <zone>|<window start> (one key column) so they can join.
CREATE TABLE IF NOT EXISTS surge_demand WITH (topic = 'surge_demand') AS
  SELECT CONCAT(zone, '|', CAST(WINDOWSTART AS VARCHAR)) AS zone_window,
         SUM(requests) AS requests
  FROM surge_demand_window
  GROUP BY CONCAT(zone, '|', CAST(WINDOWSTART AS VARCHAR));

-- ---------------------------------------------------------------- ratio and band
CREATE TABLE IF NOT EXISTS surge_zone_load WITH (topic = 'surge_zone_load') AS
  SELECT ROWKEY AS zone_window,
         SPLIT(ROWKEY, '|')[1] AS zone,
         CAST(SPLIT(ROWKEY, '|')[2] AS BIGINT) AS window_start,
         COALESCE(d.requests, 0) AS requests,
         COALESCE(s.free_drivers, 0) AS free_drivers,
         CASE WHEN COALESCE(s.free_drivers, 0) = 0 THEN CAST(NULL AS DOUBLE)
              ELSE ROUND(CAST(COALESCE(d.requests, 0) AS DOUBLE) / s.free_drivers, 2) END AS ratio,
         CASE WHEN COALESCE(s.free_drivers, 0) = 0 THEN 6
              ELSE LEAST(6, (2 * COALESCE(d.requests, 0)) / s.free_drivers) END AS band
  FROM surge_demand d FULL OUTER JOIN surge_supply s ON d.zone_window = s.zone_window;

-- ---------------------------------------------------------------- surge
-- A missing rule counts as 1.0, a zone missing from ZONES is not capped (LEAST skips NULL).
CREATE TABLE IF NOT EXISTS surge WITH (topic = 'surge') AS
  SELECT l.zone_window,
         l.zone,
         z.name AS zone_name,
         z.city,
         l.window_start,
         l.window_start + 300000 AS window_end,
         l.requests,
         l.free_drivers,
         l.ratio,
         l.band,
         LEAST(COALESCE(r.multiplier, 1.0), z.max_multiplier) AS multiplier
  FROM surge_zone_load l
  LEFT JOIN surge_rules r ON l.band = r.band
  LEFT JOIN zones z ON l.zone = z.zone;

-- The quickstart rides as a stream (key = zone, event time from "ts"), and a persistent
-- query keeping fares per zone in a table.
CREATE STREAM IF NOT EXISTS rides (zone VARCHAR KEY, ride BIGINT, fare DOUBLE, ts VARCHAR)
  WITH (topic = 'rides', timestamp = 'ts');

CREATE TABLE IF NOT EXISTS zone_fares WITH (topic = 'zone_fares') AS
  SELECT zone, COUNT(*) AS rides, ROUND(AVG(fare), 2) AS avg_fare, MAX(fare) AS top_fare
  FROM rides GROUP BY zone;

SELECT ride, zone, fare FROM rides WHERE fare > 50 EMIT CHANGES LIMIT 3;

-- Large-transaction alerts: the Sluice SQL of pipeline.toml, kept identical to its sql key
-- (run-scenario.sh checks that). Every statement was run against the topics the Postgres CDC
-- source writes (DESIGN-NOTES.md shows the record shapes).
--
-- Time: the CDC records carry the PostgreSQL commit time as their timestamp (rows read by the
-- initial snapshot carry the time of the snapshot). The join below orders the changes of
-- customers and the transactions by those times, so each transaction is checked against the
-- threshold committed before it. The 10-minute rule windows by the created_at column.

-- The current limits of each customer, from the change envelopes of public.customers
-- (the key object with one column id reads as ID, and numeric columns arrive as JSON strings).
CREATE TABLE IF NOT EXISTS thresholds (
    id BIGINT PRIMARY KEY,
    name VARCHAR,
    alert_threshold DECIMAL(14, 2),
    window_limit DECIMAL(14, 2)
) WITH (topic = 'pg.public.customers', format = 'DEBEZIUM', partitions = 1);

-- Every transaction row (inserts and snapshot reads. A delete is a tombstone, which the join drops).
CREATE STREAM IF NOT EXISTS transactions (
    id BIGINT KEY,
    customer_id BIGINT,
    amount DECIMAL(14, 2),
    currency VARCHAR,
    merchant VARCHAR,
    created_at VARCHAR
) WITH (topic = 'pg.public.transactions', format = 'DEBEZIUM', partitions = 1);

-- Every transaction with the limits of its customer as of the transaction (keyed by customer).
CREATE STREAM IF NOT EXISTS checked_transactions
  WITH (topic = 'checked_transactions', key_format = 'KAFKA') AS
  SELECT t.customer_id,
         t.id AS transaction_id,
         t.amount,
         t.currency,
         t.merchant,
         t.created_at,
         c.name AS customer_name,
         c.alert_threshold,
         c.window_limit
  FROM transactions t JOIN thresholds c ON t.customer_id = c.id;

-- Rule 1: one transaction above the threshold of its customer. Keyed by the alert id,
-- tx-N for transaction N, which the Elasticsearch sink uses as the document _id.
CREATE STREAM IF NOT EXISTS alerts WITH (topic = 'alerts', key_format = 'KAFKA') AS
  SELECT CONCAT('tx-', CAST(transaction_id AS VARCHAR)) AS alert_id,
         AS_VALUE(CONCAT('tx-', CAST(transaction_id AS VARCHAR))) AS "alert_id",
         'over threshold' AS "reason",
         customer_id AS "customer_id",
         customer_name AS "customer_name",
         transaction_id AS "transaction_id",
         amount AS "amount",
         alert_threshold AS "threshold",
         currency AS "currency",
         merchant AS "merchant",
         created_at AS "created_at",
         CAST(NULL AS BIGINT) AS "tx_count",
         CAST(NULL AS VARCHAR) AS "window_start",
         CAST(NULL AS VARCHAR) AS "window_end"
  FROM checked_transactions
  WHERE amount > alert_threshold
  PARTITION BY CONCAT('tx-', CAST(transaction_id AS VARCHAR));

-- The checked transactions again, now timed by created_at, for the windowed rule: a plain
-- JSON topic, whose timestamp column orders records and windows as declared.
CREATE STREAM IF NOT EXISTS checked_by_time (
    customer_id BIGINT KEY,
    transaction_id BIGINT,
    amount DECIMAL(14, 2),
    currency VARCHAR,
    customer_name VARCHAR,
    window_limit DECIMAL(14, 2),
    created_at VARCHAR
) WITH (topic = 'checked_transactions', timestamp = 'created_at');

-- Rule 2: the transactions of a customer in one 10-minute window, tumbling by created_at, sum
-- to more than the window_limit of the customer as of the last transaction of the window.
-- EMIT FINAL writes each window once, when the newest created_at seen passes its end plus
-- the grace period.
CREATE TABLE IF NOT EXISTS window_totals WITH (topic = 'window_totals') AS
  SELECT customer_id,
         AS_VALUE(customer_id) AS customer,
         LATEST_BY_OFFSET(customer_name) AS customer_name,
         SUM(amount) AS total,
         COUNT(*) AS tx_count,
         LATEST_BY_OFFSET(window_limit) AS window_limit,
         LATEST_BY_OFFSET(currency) AS currency,
         LATEST_BY_OFFSET(created_at) AS last_created_at,
         WINDOWSTART AS window_start,
         WINDOWEND AS window_end
  FROM checked_by_time
  WINDOW TUMBLING (SIZE 10 MINUTES, GRACE PERIOD 1 MINUTE)
  GROUP BY customer_id
  HAVING SUM(amount) > LATEST_BY_OFFSET(window_limit)
  EMIT FINAL;

-- The records of the windowed table read as a plain stream of their values: their keys hold
-- the window in binary, and the values have all we need.
CREATE STREAM IF NOT EXISTS window_alerts_in (
    customer BIGINT,
    customer_name VARCHAR,
    total DECIMAL(24, 2),
    tx_count BIGINT,
    window_limit DECIMAL(14, 2),
    currency VARCHAR,
    last_created_at VARCHAR,
    window_start BIGINT,
    window_end BIGINT
) WITH (topic = 'window_totals');

-- Rule 2 alerts, with the columns of the alerts stream, keyed sum-CUSTOMER-WINDOWSTARTMS.
-- A topic of their own: INSERT INTO alerts would be the natural way, but a pipeline runs its
-- sql at every start, and each run of an INSERT INTO adds one more query writing every alert
-- again. See DESIGN-NOTES.md, bug 3.
CREATE STREAM IF NOT EXISTS window_alerts WITH (topic = 'window_alerts', key_format = 'KAFKA') AS
  SELECT CONCAT('sum-', CAST(customer AS VARCHAR), '-', CAST(window_start AS VARCHAR)) AS alert_id,
         AS_VALUE(CONCAT('sum-', CAST(customer AS VARCHAR), '-', CAST(window_start AS VARCHAR))) AS "alert_id",
         'sum over 10 minutes' AS "reason",
         customer AS "customer_id",
         customer_name AS "customer_name",
         CAST(NULL AS BIGINT) AS "transaction_id",
         total AS "amount",
         window_limit AS "threshold",
         currency AS "currency",
         CAST(NULL AS VARCHAR) AS "merchant",
         last_created_at AS "created_at",
         tx_count AS "tx_count",
         FORMAT_TIMESTAMP(FROM_UNIXTIME(window_start), 'yyyy-MM-dd''T''HH:mm:ss''Z''') AS "window_start",
         FORMAT_TIMESTAMP(FROM_UNIXTIME(window_end), 'yyyy-MM-dd''T''HH:mm:ss''Z''') AS "window_end"
  FROM window_alerts_in
  PARTITION BY CONCAT('sum-', CAST(customer AS VARCHAR), '-', CAST(window_start AS VARCHAR));

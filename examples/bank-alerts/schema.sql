-- Large-transaction alerts (bank): the PostgreSQL side.
-- Load with: psql "postgres://postgres@127.0.0.1:PORT/bank" -v ON_ERROR_STOP=1 -f schema.sql
-- Needs wal_level = logical (see README.md). The Sluice source creates the publication and the
-- slot itself when they are missing; the publication below is created here so that its name
-- and contents are explicit (pipeline.toml names it).

CREATE TABLE IF NOT EXISTS customers (
    id               bigint        PRIMARY KEY,
    name             text          NOT NULL,
    -- one transaction above this amount raises an 'over threshold' alert
    alert_threshold  numeric(14,2) NOT NULL CHECK (alert_threshold >= 0),
    -- the sum of a customer's transactions in one 10-minute window above this raises
    -- a 'sum over 10 minutes' alert
    window_limit     numeric(14,2) NOT NULL CHECK (window_limit >= 0),
    -- informational: Sluice orders customer changes by their commit time, not by this column
    updated_at       timestamptz   NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS transactions (
    id           bigserial     PRIMARY KEY,
    customer_id  bigint        NOT NULL REFERENCES customers(id),
    amount       numeric(14,2) NOT NULL CHECK (amount > 0),
    currency     char(3)       NOT NULL DEFAULT 'EUR',
    merchant     text          NOT NULL,
    created_at   timestamptz   NOT NULL DEFAULT now()
);

DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'bank_alerts') THEN
    CREATE PUBLICATION bank_alerts FOR TABLE customers, transactions;
  END IF;
END $$;

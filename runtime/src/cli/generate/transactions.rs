//! `sluice gen transactions`: a seeded stream of bank transactions inserted into PostgreSQL
//! for the large-transaction alerts example (`examples/bank-alerts/`), with customers whose
//! alert thresholds change now and then. The example's pipeline reads both tables by CDC.
//!
//! It creates the example's tables and publication when missing (`schema.sql`), seeds
//! `--customers` customers when the table is empty, then inserts `--rate` transactions per
//! second: most are everyday amounts, about 2% are larger than the customer's threshold and
//! about 1% come in bursts of small ones that add up over 10 minutes.

use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cli::CliError;

/// The example's tables and publication, as `examples/bank-alerts/schema.sql` has them.
const SCHEMA: &str = include_str!("../../../../examples/bank-alerts/schema.sql");

const MERCHANTS: [&str; 10] = [
    "grocer", "fuel", "cafe", "books", "rail", "pharmacy", "cinema", "hardware", "airline",
    "jeweller",
];

/// Arguments of `sluice gen transactions`.
#[derive(Debug, Args)]
pub struct TransactionsArgs {
    /// The PostgreSQL database, e.g. postgres://postgres@127.0.0.1:5432/bank (no TLS).
    #[arg(long, env = "SLUICE_GEN_POSTGRES")]
    pub postgres: String,
    /// Transactions per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Customers to create when the table is empty.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    /// Threshold changes per minute (a random customer's alert threshold moves).
    #[arg(long, default_value_t = 2.0)]
    pub threshold_changes: f64,
    /// Stop after this many transactions (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// The random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl TransactionsArgs {
    /// Runs the generator.
    pub fn run(&self) -> Result<(), CliError> {
        if !(self.rate > 0.0 && self.rate.is_finite()) || self.customers == 0 {
            return Err(CliError::Usage(
                "--rate and --customers must be positive".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::io("start a runtime", e))?;
        rt.block_on(self.generate())
    }

    async fn generate(&self) -> Result<(), CliError> {
        let pg = |e: tokio_postgres::Error| CliError::Usage(format!("PostgreSQL: {e}"));
        let (client, connection) = tokio_postgres::connect(&self.postgres, tokio_postgres::NoTls)
            .await
            .map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("PostgreSQL connection ended: {e}");
            }
        });
        client.batch_execute(SCHEMA).await.map_err(pg)?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let existing: i64 = client
            .query_one("SELECT count(*) FROM customers", &[])
            .await
            .map_err(pg)?
            .get(0);
        if existing == 0 {
            for id in 1..=i64::from(self.customers) {
                let threshold = f64::from(rng.random_range(5..=50u32) * 100);
                let limit = threshold * 3.0;
                client
                    .execute(
                        "INSERT INTO customers (id, name, alert_threshold, window_limit) \
                         VALUES ($1, $2, $3::float8::numeric, $4::float8::numeric)",
                        &[&id, &format!("customer {id}"), &threshold, &limit],
                    )
                    .await
                    .map_err(pg)?;
            }
            eprintln!("Created {} customers.", self.customers);
        }
        let ids: Vec<i64> = client
            .query("SELECT id FROM customers ORDER BY id", &[])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let insert = client
            .prepare(
                "INSERT INTO transactions (customer_id, amount, merchant) \
                 VALUES ($1, $2::float8::numeric(14,2), $3)",
            )
            .await
            .map_err(pg)?;
        let started = Instant::now();
        let mut last_report = Instant::now();
        let (mut sent, mut changes) = (0u64, 0u64);
        let mut burst: Option<(i64, u32)> = None;
        let change_p = self.threshold_changes / 60.0 / self.rate;
        while self.count.is_none_or(|c| sent < c) {
            let due = Duration::from_secs_f64(sent as f64 / self.rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let (customer, amount) = match burst.take() {
                // A burst: many mid-size payments in a few minutes (the windowed rule).
                Some((c, left)) => {
                    if left > 1 {
                        burst = Some((c, left - 1));
                    }
                    (c, f64::from(rng.random_range(200..=900u32)))
                }
                None => {
                    let c = ids[rng.random_range(0..ids.len())];
                    let x: f64 = rng.random();
                    if x < 0.02 {
                        // Larger than any threshold.
                        (c, f64::from(rng.random_range(5_001..=20_000u32)))
                    } else {
                        if x < 0.03 {
                            burst = Some((c, rng.random_range(8..=15)));
                        }
                        let cents: u32 = rng.random_range(100..=20_000);
                        (c, f64::from(cents) / 100.0)
                    }
                }
            };
            let merchant = MERCHANTS[rng.random_range(0..MERCHANTS.len())];
            client
                .execute(&insert, &[&customer, &amount, &merchant])
                .await
                .map_err(pg)?;
            sent += 1;
            if rng.random::<f64>() < change_p {
                let c = ids[rng.random_range(0..ids.len())];
                let threshold = f64::from(rng.random_range(5..=50u32) * 100);
                client
                    .execute(
                        "UPDATE customers SET alert_threshold = $2::float8::numeric, updated_at = now() WHERE id = $1",
                        &[&c, &threshold],
                    )
                    .await
                    .map_err(pg)?;
                changes += 1;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!("{sent} transactions, {changes} threshold changes");
            }
        }
        eprintln!("Inserted {sent} transactions and changed {changes} thresholds.");
        Ok(())
    }
}

//! `sluice gen transactions`: bank transactions inserted into PostgreSQL at a given rate,
//! with customers whose alert thresholds change now and then, for the large-transaction
//! alerts example (`examples/bank-alerts/`, whose pipeline reads both tables by CDC).
//!
//! With `--init` it creates the example's tables and publication (`schema.sql`, compiled
//! in) and customers when there are none. Every `--large-every`-th row is above its
//! customer's threshold in force when it is committed; the generator keeps its own copy of
//! the thresholds it sets, so it knows which alerts the pipeline must give (`--expected`).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cli::CliError;

/// The example's tables and publication, as `examples/bank-alerts/schema.sql` has them.
const SCHEMA: &str = include_str!("../../../../examples/bank-alerts/schema.sql");

const FIRST: [&str; 10] = [
    "Ada", "Bruno", "Chidi", "Dana", "Emil", "Farah", "Goran", "Hana", "Ines", "Jonas",
];
const LAST: [&str; 10] = [
    "Lovelace", "Diaz", "Okafor", "Levi", "Novak", "Haddad", "Petrov", "Sato", "Moreau", "Berg",
];
const MERCHANTS: [&str; 10] = [
    "Grocer", "Fuel", "Cafe", "Bookshop", "Rail", "Pharmacy", "Cinema", "Hardware", "Airline",
    "Jeweller",
];

/// Arguments of `sluice gen transactions`.
#[derive(Debug, Args)]
pub struct TransactionsArgs {
    /// The database: postgres://user[:password]@host:port/db (no TLS).
    #[arg(long, env = "BANK_PG_URL")]
    pub url: String,
    /// Create the example's tables and publication when missing, and customers when there
    /// are none.
    #[arg(long)]
    pub init: bool,
    /// Customers to create with --init.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    /// Transactions per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Stop after this many transactions.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// One row in this many is above its customer's threshold (it alerts).
    #[arg(long, default_value_t = 50)]
    pub large_every: u64,
    /// How often one random customer's threshold changes (0s: never).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub threshold_every: Duration,
    /// Rows per database transaction.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// The random seed (customers, amounts, merchants, the order of threshold changes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Append each over-threshold alert the pipeline must give to this file (JSON lines).
    #[arg(long)]
    pub expected: Option<std::path::PathBuf>,
}

impl TransactionsArgs {
    /// Runs the generator.
    pub fn run(&self) -> Result<(), CliError> {
        if !(self.rate > 0.0 && self.rate.is_finite())
            || self.customers == 0
            || self.batch == 0
            || self.large_every == 0
        {
            return Err(CliError::Usage(
                "--rate, --customers, --batch and --large-every must be positive".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::io("start a runtime", e))?;
        rt.block_on(self.generate())
    }

    async fn generate(&self) -> Result<(), CliError> {
        let pg = |e: tokio_postgres::Error| {
            // The error's own text is generic ("error connecting to server"); the cause says
            // what happened (refused, authentication, the server's message).
            let cause = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            CliError::Usage(format!("PostgreSQL: {e}{cause}"))
        };
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("The PostgreSQL connection ended: {e}");
            }
        });
        let mut rng = StdRng::seed_from_u64(self.seed);
        if self.init {
            client.batch_execute(SCHEMA).await.map_err(pg)?;
            let existing: i64 = client
                .query_one("SELECT count(*) FROM customers", &[])
                .await
                .map_err(pg)?
                .get(0);
            if existing == 0 {
                for id in 1..=i64::from(self.customers) {
                    let name = format!(
                        "{} {}",
                        FIRST[rng.random_range(0..FIRST.len())],
                        LAST[rng.random_range(0..LAST.len())]
                    );
                    let threshold = threshold(&mut rng);
                    client
                        .execute(
                            "INSERT INTO customers (id, name, alert_threshold, window_limit) \
                             VALUES ($1, $2, $3::float8::numeric, $4::float8::numeric)",
                            &[&id, &name, &threshold, &(threshold * 3.0)],
                        )
                        .await
                        .map_err(pg)?;
                }
                eprintln!("Created {} customers.", self.customers);
            }
        }
        let mut customers: Vec<(i64, String, f64)> = client
            .query(
                "SELECT id, name, alert_threshold::float8 FROM customers ORDER BY id",
                &[],
            )
            .await
            .map_err(|e| {
                CliError::Usage(format!(
                    "PostgreSQL: {e} (create the tables with --init or schema.sql)"
                ))
            })?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if customers.is_empty() {
            return Err(CliError::Usage(
                "the customers table is empty: give --init to create customers".into(),
            ));
        }
        let mut expected = match &self.expected {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| CliError::io(format!("open {}", p.display()), e))?,
            ),
            None => None,
        };
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut next_change = self.threshold_every;
        let (mut sent, mut changes, mut alerts) = (0u64, 0u64, 0u64);
        while self.count.is_none_or(|c| sent < c)
            && self.duration.is_none_or(|d| started.elapsed() < d)
        {
            // A steady rate: each batch waits for its time, never bursting to catch up.
            let due = Duration::from_secs_f64(sent as f64 / self.rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let rows = u64::from(self.batch).min(self.count.map_or(u64::MAX, |c| c - sent));
            let mut sql = String::from("BEGIN;");
            for _ in 0..rows {
                sent += 1;
                let i = rng.random_range(0..customers.len());
                let (id, _, limit) = &customers[i];
                let amount = if sent % self.large_every == 0 {
                    (limit * rng.random_range(1.01..3.0) * 100.0).round() / 100.0
                } else {
                    // Log-normal around 40.00.
                    let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
                    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    ((40.0 * (0.8 * normal).exp()) * 100.0)
                        .round()
                        .clamp(1.0, 9_999_999.0)
                        / 100.0
                };
                if amount > *limit {
                    alerts += 1;
                    if let Some(f) = expected.as_mut() {
                        let line = serde_json::json!({
                            "reason": "over threshold", "customer_id": id, "amount": amount, "threshold": limit
                        });
                        writeln!(f, "{line}").map_err(|e| CliError::io("write --expected", e))?;
                    }
                }
                let merchant = MERCHANTS[rng.random_range(0..MERCHANTS.len())];
                sql.push_str(&format!(
                    "INSERT INTO transactions (customer_id, amount, merchant) VALUES ({id}, {amount:.2}, '{merchant}');"
                ));
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await.map_err(pg)?;
            if !self.threshold_every.is_zero() && started.elapsed() >= next_change {
                next_change += self.threshold_every;
                let i = rng.random_range(0..customers.len());
                let new = threshold(&mut rng);
                let (id, _, old) = &mut customers[i];
                client
                    .execute(
                        "UPDATE customers SET alert_threshold = $2::float8::numeric, \
                         window_limit = $3::float8::numeric, updated_at = now() WHERE id = $1",
                        &[&*id, &new, &(new * 3.0)],
                    )
                    .await
                    .map_err(pg)?;
                eprintln!("customer {id}: alert_threshold {old:.2} -> {new:.2}");
                *old = new;
                changes += 1;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "{sent} transactions ({:.1}/s), {changes} threshold changes, {alerts} above the threshold in force",
                    sent as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        eprintln!(
            "Inserted {sent} transactions; {changes} threshold changes; {alerts} above the threshold in force."
        );
        Ok(())
    }
}

/// A threshold: a multiple of 50 from 200 to 5,000.
fn threshold(rng: &mut StdRng) -> f64 {
    f64::from(rng.random_range(4..=100u32) * 50)
}

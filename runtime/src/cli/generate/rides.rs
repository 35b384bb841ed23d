//! `sluice gen rides`: a seeded simulation of a ride-hailing city for the surge-pricing
//! example (`examples/surge-pricing/`): riders' requests, drivers' pings (with trips, zone
//! moves, drivers going offline and late pings), and the `zones` and `surge_rules` tables.
//!
//! The simulation is event-driven on a simulated clock, so the same arguments with an
//! explicit `--start` write the same records; `--speed` only decides how fast the clock runs
//! against the wall clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{Clock, Emit};
use crate::cli::CliError;

/// The zones, their multiplier caps and request weights, in order.
const ZONES: [(&str, f64, f64); 8] = [
    ("downtown", 2.5, 0.30),
    ("airport", 2.0, 0.20),
    ("stadium", 3.0, 0.15),
    ("harbor", 1.5, 0.10),
    ("midtown", 2.5, 0.10),
    ("university", 2.0, 0.07),
    ("old-town", 2.0, 0.05),
    ("riverside", 1.5, 0.03),
];

/// The default surge rules: multiplier per band 0–6.
const RULES: [f64; 7] = [1.0, 1.0, 1.2, 1.5, 1.8, 2.2, 2.5];

const MINUTE: i64 = 60_000;

/// Arguments of `sluice gen rides`.
#[derive(Debug, Args)]
pub struct RidesArgs {
    /// Ride requests per second of simulated time, in total (a Poisson process).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Drivers (default: max(10, 800 × rate), about one free driver per request per 5 min).
    #[arg(long)]
    pub drivers: Option<usize>,
    /// Zones, 1 to 8: downtown, airport, stadium, harbor, midtown, university, old-town,
    /// riverside.
    #[arg(long, default_value_t = 4)]
    pub zones: usize,
    /// Skip writing the `zones` and `surge_rules` tables at the start.
    #[arg(long)]
    pub no_seed_tables: bool,
    /// The fraction of driver pings that arrive late (90% by 30–150 s, within the example's
    /// grace period for some windows; 10% by 7–10 min, dead letters).
    #[arg(long, default_value_t = 0.01)]
    pub late_fraction: f64,
    /// Shared options: seed, start, duration, speed, where to write.
    #[command(flatten)]
    pub clock: Clock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Free,
    Busy,
    Offline,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Free => "free",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }
}

#[derive(Debug)]
struct Driver {
    id: String,
    zone: usize,
    status: Status,
}

/// What happens at a simulated time. The order of variants breaks ties between events at
/// the same millisecond (then the sequence number), so a run is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Minute,
    TripEnd(usize),
    Return(usize),
    Ping(usize),
    Request,
    /// A late ping, written now with its event time.
    Late(String, String, i64),
}

struct City {
    rng: StdRng,
    start: i64,
    zones: usize,
    drivers: Vec<Driver>,
    late_fraction: f64,
    queue: BinaryHeap<Reverse<(i64, u64, Event)>>,
    seq: u64,
    requests: u64,
    pings: u64,
    late: u64,
}

impl City {
    fn at(&mut self, t: i64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, e)));
    }

    /// A zone by the request weights; in the first 10 minutes of each 20-minute block one
    /// zone (rotating) weighs four times as much.
    fn pick_zone(&mut self, t: i64, hotspot: bool) -> usize {
        let block = (t - self.start).max(0) / (20 * MINUTE);
        let hot = (hotspot && (t - self.start) % (20 * MINUTE) < 10 * MINUTE)
            .then_some(block as usize % self.zones);
        let weight = |z: usize| ZONES[z].2 * if Some(z) == hot { 4.0 } else { 1.0 };
        let total: f64 = (0..self.zones).map(weight).sum();
        let mut x = self.rng.random::<f64>() * total;
        for z in 0..self.zones {
            x -= weight(z);
            if x <= 0.0 {
                return z;
            }
        }
        self.zones - 1
    }

    fn exp(&mut self, mean_ms: f64) -> i64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        (-u.ln() * mean_ms) as i64
    }

    fn ping(&mut self, out: &mut dyn Emit, t: i64, d: usize) -> Result<(), CliError> {
        let driver = &self.drivers[d];
        let value = json!({
            "driver_id": driver.id,
            "zone": ZONES[driver.zone].0,
            "status": driver.status.name(),
            "ts": super::iso(t),
        })
        .to_string();
        let key = driver.id.clone();
        self.pings += 1;
        if self.rng.random::<f64>() < self.late_fraction {
            let delay = if self.rng.random::<f64>() < 0.9 {
                self.rng.random_range(30_000..=150_000)
            } else {
                self.rng.random_range(420_000..=600_000)
            };
            self.late += 1;
            self.at(t + delay, Event::Late(key, value, t));
            return Ok(());
        }
        out.emit("driver_pings", &key, &value, t)
    }

    fn step(&mut self, out: &mut dyn Emit, t: i64, e: Event, rate: f64) -> Result<(), CliError> {
        match e {
            Event::Request => {
                let zone = self.pick_zone(t, true);
                self.requests += 1;
                let id = format!("r{:08}", self.requests);
                let rider = format!("u{}", self.rng.random_range(0..10_000));
                let value = json!({"request_id": id, "rider_id": rider, "zone": ZONES[zone].0, "ts": super::iso(t)});
                out.emit("ride_requests", &id, &value.to_string(), t)?;
                let free: Vec<usize> = (0..self.drivers.len())
                    .filter(|&d| {
                        self.drivers[d].status == Status::Free && self.drivers[d].zone == zone
                    })
                    .collect();
                if !free.is_empty() {
                    let d = free[self.rng.random_range(0..free.len())];
                    self.drivers[d].status = Status::Busy;
                    self.ping(out, t, d)?;
                    let trip = self.exp(8.0 * MINUTE as f64).max(MINUTE);
                    self.at(t + trip, Event::TripEnd(d));
                }
                let next = self.exp(1000.0 / rate).max(1);
                self.at(t + next, Event::Request);
            }
            Event::TripEnd(d) => {
                self.drivers[d].status = Status::Free;
                self.drivers[d].zone = self.pick_zone(t, false);
                self.ping(out, t, d)?;
            }
            Event::Return(d) => {
                self.drivers[d].status = Status::Free;
                self.drivers[d].zone = self.pick_zone(t, false);
                self.ping(out, t, d)?;
            }
            Event::Ping(d) => {
                if self.drivers[d].status != Status::Offline {
                    self.ping(out, t, d)?;
                }
                self.at(t + 30_000, Event::Ping(d));
            }
            Event::Minute => {
                for d in 0..self.drivers.len() {
                    if self.drivers[d].status != Status::Free {
                        continue;
                    }
                    if self.rng.random::<f64>() < 1.0 / 60.0 {
                        self.drivers[d].status = Status::Offline;
                        self.ping(out, t, d)?;
                        let back = self.exp(20.0 * MINUTE as f64);
                        self.at(t + back, Event::Return(d));
                    } else if self.zones > 1 && self.rng.random::<f64>() < 0.05 {
                        let from = self.drivers[d].zone;
                        while self.drivers[d].zone == from {
                            self.drivers[d].zone = self.pick_zone(t, false);
                        }
                        self.ping(out, t, d)?;
                    }
                }
                self.at(t + MINUTE, Event::Minute);
            }
            Event::Late(key, value, time) => out.emit("driver_pings", &key, &value, time)?,
        }
        Ok(())
    }
}

impl RidesArgs {
    /// Runs the simulation, writing to `out`.
    pub fn run(&self, out: &mut dyn Emit) -> Result<(), CliError> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(CliError::Usage("--rate must be a positive number".into()));
        }
        if !(1..=ZONES.len()).contains(&self.zones) {
            return Err(CliError::Usage("--zones must be 1 to 8".into()));
        }
        if !(0.0..=1.0).contains(&self.late_fraction) {
            return Err(CliError::Usage("--late-fraction must be 0 to 1".into()));
        }
        let start = self.clock.start_ms()?;
        let n = self
            .drivers
            .unwrap_or_else(|| ((800.0 * self.rate).ceil() as usize).max(10));
        let mut city = City {
            rng: StdRng::seed_from_u64(self.clock.seed),
            start,
            zones: self.zones,
            drivers: Vec::with_capacity(n),
            late_fraction: self.late_fraction,
            queue: BinaryHeap::new(),
            seq: 0,
            requests: 0,
            pings: 0,
            late: 0,
        };
        if !self.no_seed_tables {
            for (zone, cap, _) in &ZONES[..self.zones] {
                let mut name = zone.replace('-', " ");
                if let Some(first) = name.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                let value =
                    json!({"zone": zone, "name": name, "city": "Metro", "max_multiplier": cap});
                out.emit("zones", zone, &value.to_string(), start)?;
            }
            for (band, multiplier) in RULES.iter().enumerate() {
                let value =
                    json!({"band": band, "min_ratio": band as f64 / 2.0, "multiplier": multiplier});
                out.emit("surge_rules", &band.to_string(), &value.to_string(), start)?;
            }
        }
        let width = n.to_string().len().max(4);
        for d in 0..n {
            let zone = city.pick_zone(start, false);
            city.drivers.push(Driver {
                id: format!("d{:0width$}", d + 1),
                zone,
                status: Status::Free,
            });
            let phase = city.rng.random_range(0..30_000);
            city.at(start + phase, Event::Ping(d));
        }
        city.at(start + MINUTE, Event::Minute);
        let first = city.exp(1000.0 / self.rate);
        city.at(start + first, Event::Request);
        let end = self
            .clock
            .duration
            .map(|d| start + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4));
        let mut pacer = self.clock.pacer(start);
        while let Some(Reverse((t, _, e))) = city.queue.pop() {
            if end.is_some_and(|end| t >= end) {
                break;
            }
            pacer.wait_until(t, out)?;
            city.step(out, t, e, self.rate)?;
            if pacer.report_due() {
                let count = |s| city.drivers.iter().filter(|d| d.status == s).count();
                eprintln!(
                    "{}: {} requests, {} pings ({} late); drivers free {}, busy {}, offline {}",
                    super::iso(t),
                    city.requests,
                    city.pings,
                    city.late,
                    count(Status::Free),
                    count(Status::Busy),
                    count(Status::Offline)
                );
            }
        }
        out.flush()?;
        eprintln!(
            "Wrote {} requests and {} pings ({} late).",
            city.requests, city.pings, city.late
        );
        Ok(())
    }
}

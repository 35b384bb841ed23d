//! The events of a run: one fixed-seed Nexmark generator, its persons, auctions and bids
//! encoded as the JSON records of their three topics.

use bytes::Bytes;

use crate::cli::CliError;

/// A kind of Nexmark event, with its topic and the stream declared over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// New users (`persons`; key `id`).
    Person,
    /// New auctions (`auctions`; key `id`).
    Auction,
    /// Bids (`bids`; no key).
    Bid,
}

impl Kind {
    /// Its topic.
    pub fn topic(self) -> &'static str {
        match self {
            Kind::Person => "persons",
            Kind::Auction => "auctions",
            Kind::Bid => "bids",
        }
    }

    /// The name of the stream over its topic, as the catalog folds it (and as the batch
    /// side registers its table).
    pub fn stream(self) -> &'static str {
        match self {
            Kind::Person => "PERSONS",
            Kind::Auction => "AUCTIONS",
            Kind::Bid => "BIDS",
        }
    }
}

/// One record of a topic.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The record key (the id, as text; `KAFKA` key format), none for bids.
    pub key: Option<Bytes>,
    /// The JSON value.
    pub value: Bytes,
    /// Event time (ms), also the record timestamp, so that a query merging two topics by
    /// timestamp sees them in the generator's order.
    pub timestamp: i64,
}

/// The events of a run.
#[derive(Debug, Default)]
pub struct Events {
    /// Persons, in generation order.
    pub persons: Vec<Encoded>,
    /// Auctions, in generation order.
    pub auctions: Vec<Encoded>,
    /// Bids, in generation order.
    pub bids: Vec<Encoded>,
    /// Events the generator produced, of all kinds (also those not encoded).
    pub total: u64,
    /// The longest auction lifetime (`expires - date_time`), ms.
    pub max_auction_ms: u64,
}

impl Events {
    /// The records of one kind.
    pub fn of(&self, kind: Kind) -> &[Encoded] {
        match kind {
            Kind::Person => &self.persons,
            Kind::Auction => &self.auctions,
            Kind::Bid => &self.bids,
        }
    }
}

/// Runs the generator (all three kinds interleaved, as Nexmark's one event stream: per 50
/// events 1 person, 3 auctions and 46 bids) until it has produced `bids` bids, and encodes
/// the kinds in `keep`; event times start at `base_time` (ms). The bids are the same as those of a bids-only generator: the kind of
/// an event and its contents depend only on its number.
pub fn generate(bids: usize, keep: &[Kind], base_time: u64) -> Result<Events, CliError> {
    let config = nexmark::config::NexmarkConfig {
        base_time,
        ..Default::default()
    };
    let json = |v: serde_json::Value| -> Result<Bytes, CliError> {
        serde_json::to_vec(&v)
            .map(Bytes::from)
            .map_err(|e| CliError::Usage(format!("encode a Nexmark event: {e}")))
    };
    let mut out = Events::default();
    if bids == 0 {
        return Ok(out);
    }
    let mut bid_count = 0usize;
    for event in nexmark::EventGenerator::new(config) {
        out.total += 1;
        match event {
            nexmark::event::Event::Person(p) => {
                if keep.contains(&Kind::Person) {
                    // The id is the record key (a table's primary key), not a value field.
                    let value = json(serde_json::json!({
                        "name": p.name,
                        "email_address": p.email_address,
                        "credit_card": p.credit_card,
                        "city": p.city,
                        "state": p.state,
                        "date_time": p.date_time,
                        "extra": p.extra,
                    }))?;
                    out.persons.push(Encoded {
                        key: Some(Bytes::from(p.id.to_string())),
                        value,
                        timestamp: p.date_time as i64,
                    });
                }
            }
            nexmark::event::Event::Auction(a) => {
                out.max_auction_ms = out
                    .max_auction_ms
                    .max(a.expires.saturating_sub(a.date_time));
                if keep.contains(&Kind::Auction) {
                    let value = json(serde_json::json!({
                        "item_name": a.item_name,
                        "description": a.description,
                        "initial_bid": a.initial_bid,
                        "reserve": a.reserve,
                        "date_time": a.date_time,
                        "expires": a.expires,
                        "seller": a.seller,
                        "category": a.category,
                        "extra": a.extra,
                    }))?;
                    out.auctions.push(Encoded {
                        key: Some(Bytes::from(a.id.to_string())),
                        value,
                        timestamp: a.date_time as i64,
                    });
                }
            }
            nexmark::event::Event::Bid(b) => {
                if keep.contains(&Kind::Bid) {
                    let value = json(serde_json::json!({
                        "auction": b.auction,
                        "bidder": b.bidder,
                        "price": b.price,
                        "channel": b.channel,
                        "url": b.url,
                        "date_time": b.date_time,
                        "extra": b.extra,
                    }))?;
                    out.bids.push(Encoded {
                        key: None,
                        value,
                        timestamp: b.date_time as i64,
                    });
                }
                bid_count += 1;
                if bid_count == bids {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bids_are_those_of_a_bids_only_generator() {
        let base_time = 1_672_531_200_000;
        let events = generate(500, &[Kind::Person, Kind::Auction, Kind::Bid], base_time).unwrap();
        let config = nexmark::config::NexmarkConfig {
            base_time,
            ..Default::default()
        };
        let only: Vec<(usize, usize, usize, u64)> = nexmark::EventGenerator::new(config)
            .with_type_filter(nexmark::event::EventType::Bid)
            .take(500)
            .map(|e| match e {
                nexmark::event::Event::Bid(b) => (b.auction, b.bidder, b.price, b.date_time),
                other => panic!("not a bid: {other:?}"),
            })
            .collect();
        let ours: Vec<(usize, usize, usize, u64)> = events
            .bids
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b.value).unwrap();
                let n = |f: &str| v[f].as_u64().unwrap();
                (
                    n("auction") as usize,
                    n("bidder") as usize,
                    n("price") as usize,
                    n("date_time"),
                )
            })
            .collect();
        assert_eq!(ours, only);
        // 46 bids per 50 events: 10 full epochs and 40 of the 11th's bids.
        assert_eq!(events.total, 544);
        assert_eq!(events.persons.len(), 11);
        assert_eq!(events.auctions.len(), 33);
        assert!(events.max_auction_ms > 0);
    }
}

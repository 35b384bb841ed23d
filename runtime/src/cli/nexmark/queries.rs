//! The Nexmark queries: each one's persistent statements, the DataFusion batch query that
//! does the same work, and what is read and compared.

use super::events::Kind;

/// Declarations of the sources over the generator's topics (`{p}` is the partition count).
/// `persons_t` is the persons topic read as a table keyed by id, for q3's stream-table join.
pub const SOURCES: &[&str] = &[
    "CREATE STREAM bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
     url VARCHAR, date_time BIGINT, extra VARCHAR) \
     WITH (topic='bids', partitions={p}, timestamp='date_time')",
    "CREATE STREAM auctions (id BIGINT KEY, item_name VARCHAR, description VARCHAR, \
     initial_bid BIGINT, reserve BIGINT, date_time BIGINT, expires BIGINT, seller BIGINT, \
     category BIGINT, extra VARCHAR) \
     WITH (topic='auctions', partitions={p}, timestamp='date_time')",
    "CREATE STREAM persons (id BIGINT KEY, name VARCHAR, email_address VARCHAR, \
     credit_card VARCHAR, city VARCHAR, state VARCHAR, date_time BIGINT, extra VARCHAR) \
     WITH (topic='persons', partitions={p}, timestamp='date_time')",
    "CREATE TABLE persons_t (id BIGINT PRIMARY KEY, name VARCHAR, email_address VARCHAR, \
     credit_card VARCHAR, city VARCHAR, state VARCHAR, date_time BIGINT, extra VARCHAR) \
     WITH (topic='persons', partitions={p}, timestamp='date_time')",
];

/// The longest auction q4's join window covers: its `WITHIN (1 SECOND, 0 SECONDS)`. The
/// generator's auctions (at its default 10,000 events/s) last at most about 0.34 s; a run
/// whose auctions outlast the window is refused, since q4 would then miss bids.
pub const Q4_WINDOW_MS: u64 = 1000;

/// What the streaming result is compared against, with `--check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not comparable: windows still open at the end are in the batch result only.
    No,
    /// A stream: every record, as a multiset.
    Stream,
    /// A table: the latest row per key (tombstones delete it).
    Table,
}

/// One benchmark query.
#[derive(Debug)]
pub struct Query {
    /// `q0` ...
    pub name: &'static str,
    /// The topics it reads (their records are the events it counts).
    pub reads: &'static [Kind],
    /// Persistent statements, run in order; the last one's result is the query's.
    pub streaming: &'static [&'static str],
    /// The source the last statement creates, as the catalog names it.
    pub output: &'static str,
    /// The same work as one DataFusion query over tables named as the streams (`BIDS`,
    /// `AUCTIONS`, `PERSONS`); identifiers are folded to upper case outside quotes.
    pub batch: &'static str,
    /// How `--check` compares the results (on the batch query's columns).
    pub check: Check,
}

/// Every query, in the order a run takes them.
pub const QUERIES: &[Query] = &[
    Query {
        name: "q0",
        reads: &[Kind::Bid],
        streaming: &["CREATE STREAM q0 AS SELECT auction, bidder, price, date_time FROM bids"],
        output: "Q0",
        batch: "SELECT auction, bidder, price, date_time FROM bids",
        check: Check::Stream,
    },
    Query {
        name: "q1",
        reads: &[Kind::Bid],
        streaming: &[
            "CREATE STREAM q1 AS SELECT auction, bidder, price * 0.908 AS price, date_time FROM bids",
        ],
        output: "Q1",
        batch: "SELECT auction, bidder, price * 0.908 AS price, date_time FROM bids",
        check: Check::Stream,
    },
    Query {
        name: "q2",
        reads: &[Kind::Bid],
        streaming: &["CREATE STREAM q2 AS SELECT auction, price FROM bids WHERE auction % 123 = 0"],
        output: "Q2",
        batch: "SELECT auction, price FROM bids WHERE auction % 123 = 0",
        check: Check::Stream,
    },
    Query {
        name: "q3",
        reads: &[Kind::Person, Kind::Auction],
        streaming: &[
            "CREATE STREAM q3 AS SELECT p.id AS seller, p.name AS name, \
             p.city AS city, p.state AS state, a.id AS auction \
             FROM auctions a JOIN persons_t p ON a.seller = p.id \
             WHERE a.category = 10 AND p.state IN ('or', 'id', 'ca')",
        ],
        output: "Q3",
        // The table row as of the auction: a person registered later does not match.
        batch: "SELECT p.id AS seller, p.name AS name, p.city AS city, p.state AS state, \
             a.id AS auction \
             FROM auctions a JOIN persons p ON a.seller = p.id AND p.date_time <= a.date_time \
             WHERE a.category = 10 AND p.state IN ('or', 'id', 'ca')",
        check: Check::Stream,
    },
    Query {
        name: "q4",
        reads: &[Kind::Auction, Kind::Bid],
        streaming: &[
            "CREATE TABLE q4_max AS SELECT a.id AS id, a.category AS category, \
             MAX(b.price) AS final_price \
             FROM bids b JOIN auctions a WITHIN (1 SECOND, 0 SECONDS) GRACE PERIOD 0 SECONDS \
             ON b.auction = a.id \
             WHERE b.date_time BETWEEN a.date_time AND a.expires \
             GROUP BY a.id, a.category",
            "CREATE TABLE q4 AS SELECT category, AVG(final_price) AS avg_price \
             FROM q4_max GROUP BY category",
        ],
        output: "Q4",
        batch: "SELECT category, AVG(final_price) AS avg_price FROM ( \
             SELECT a.id, a.category AS category, MAX(b.price) AS final_price \
             FROM auctions a JOIN bids b ON a.id = b.auction \
             AND b.date_time BETWEEN a.date_time AND a.expires \
             GROUP BY a.id, a.category) GROUP BY category",
        check: Check::Table,
    },
    Query {
        name: "q5",
        reads: &[Kind::Bid],
        streaming: &[
            "CREATE TABLE q5 AS SELECT auction, COUNT(*) AS num FROM bids \
             WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 0 SECONDS) \
             GROUP BY auction EMIT FINAL",
        ],
        output: "Q5",
        batch: "SELECT auction, ws, COUNT(*) AS num FROM (SELECT auction, \
             unnest(make_array(date_time - date_time % 2000, date_time - date_time % 2000 - 2000, \
             date_time - date_time % 2000 - 4000, date_time - date_time % 2000 - 6000, \
             date_time - date_time % 2000 - 8000)) AS ws FROM bids) GROUP BY auction, ws",
        check: Check::No,
    },
    Query {
        name: "q7",
        reads: &[Kind::Bid],
        streaming: &[
            "CREATE TABLE q7 AS SELECT 'all' AS bucket, MAX(price) AS maxprice FROM bids \
             WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY 'all' EMIT FINAL",
        ],
        output: "Q7",
        batch: "SELECT date_time - date_time % 10000 AS ws, MAX(price) AS maxprice FROM bids GROUP BY 1",
        check: Check::No,
    },
    Query {
        name: "q8",
        reads: &[Kind::Person, Kind::Auction],
        streaming: &["CREATE TABLE q8 AS SELECT p.id AS id, p.name AS name, \
             p.date_time - p.date_time % 10000 AS starttime, COUNT(*) AS auctions \
             FROM persons p JOIN auctions a WITHIN 10 SECONDS GRACE PERIOD 0 SECONDS \
             ON p.id = a.seller \
             WHERE p.date_time / 10000 = a.date_time / 10000 \
             GROUP BY p.id, p.name, p.date_time - p.date_time % 10000"],
        output: "Q8",
        batch: "SELECT p.id AS id, p.name AS name, p.date_time - p.date_time % 10000 AS starttime, \
             COUNT(*) AS auctions \
             FROM persons p JOIN auctions a ON p.id = a.seller \
             AND p.date_time / 10000 = a.date_time / 10000 \
             GROUP BY p.id, p.name, p.date_time - p.date_time % 10000",
        check: Check::Table,
    },
];

/// `sql` with everything outside single quotes in upper case: the decoded columns are upper
/// case (ksqlDB's rule) and DataFusion's own folding is off, while literals keep their case.
pub fn fold_outside_quotes(sql: &str) -> String {
    let mut quoted = false;
    sql.chars()
        .map(|c| {
            if c == '\'' {
                quoted = !quoted;
            }
            if quoted { c } else { c.to_ascii_uppercase() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_literals() {
        assert_eq!(
            fold_outside_quotes("select a from t where s in ('or', 'Id')"),
            "SELECT A FROM T WHERE S IN ('or', 'Id')"
        );
    }
}

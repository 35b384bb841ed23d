//! Partition assignors: the deterministic functions that turn a group's subscriptions and
//! topic sizes into a target assignment (Kafka's range and round-robin strategies).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One partition of one topic; the unit a consumer group hands out to its members.
///
/// Orders by topic name, then partition number, which is the order the assignors deal in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number within the topic, from 0.
    pub partition: u32,
}

impl TopicPartition {
    /// The partition `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    /// Kafka's usual rendering, `topic-3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The strategy a group uses to compute its target assignment.
///
/// Both strategies are pure and deterministic: the same members, subscriptions and partition
/// counts always give the same assignment, which is what lets the coordinator recompute the
/// target at any time without remembering how it got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignor {
    /// Kafka's `RangeAssignor`: per topic, contiguous ranges of partitions to the members
    /// subscribed to it, sorted by member id; the first `partitions % members` get one extra.
    #[default]
    Range,
    /// Kafka's `RoundRobinAssignor`: every subscribed topic-partition, sorted, dealt in turn to
    /// the members sorted by id, skipping members not subscribed to that partition's topic.
    RoundRobin,
}

/// The error of parsing an [`Assignor`] from a name it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown assignor `{name}` (expected `range` or `roundrobin`)")]
pub struct UnknownAssignor {
    /// The name that was given.
    pub name: String,
}

impl FromStr for Assignor {
    type Err = UnknownAssignor;

    /// Accepts `range`, `roundrobin` and `round-robin`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "range" => Ok(Assignor::Range),
            "roundrobin" | "round-robin" => Ok(Assignor::RoundRobin),
            _ => Err(UnknownAssignor { name: s.to_owned() }),
        }
    }
}

impl fmt::Display for Assignor {
    /// The canonical name, `range` or `roundrobin`, which [`FromStr`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        })
    }
}

impl Assignor {
    /// Computes the assignment of `partitions` (topic → partition count) to `members`
    /// (member id → subscribed topics).
    ///
    /// Every member appears in the result, with an empty set if it gets nothing. A member only
    /// ever gets partitions of topics it subscribes to, every partition of a subscribed topic
    /// goes to exactly one member, and a subscribed topic absent from `partitions` counts as
    /// having no partitions (it may not exist yet).
    pub fn assign(
        &self,
        members: &BTreeMap<String, BTreeSet<String>>,
        partitions: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        let mut out: BTreeMap<String, BTreeSet<TopicPartition>> = members
            .keys()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        match self {
            Assignor::Range => assign_range(members, partitions, &mut out),
            Assignor::RoundRobin => assign_round_robin(members, partitions, &mut out),
        }
        out
    }
}

/// Topics somebody subscribes to, in name order.
fn subscribed_topics(members: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<&str> {
    members.values().flatten().map(String::as_str).collect()
}

fn assign_range(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    for topic in subscribed_topics(members) {
        // BTreeMap iteration already gives the members sorted by id, as Kafka sorts them.
        let consumers: Vec<&String> = members
            .iter()
            .filter(|(_, subs)| subs.contains(topic))
            .map(|(id, _)| id)
            .collect();
        let count = partitions.get(topic).copied().unwrap_or(0);
        if consumers.is_empty() || count == 0 {
            continue;
        }
        let n = consumers.len() as u32;
        let per = count / n;
        let extra = count % n;
        for (i, id) in (0u32..).zip(consumers) {
            let start = i * per + i.min(extra);
            let len = per + u32::from(i < extra);
            if let Some(set) = out.get_mut(id) {
                set.extend((start..start + len).map(|p| TopicPartition::new(topic, p)));
            }
        }
    }
}

fn assign_round_robin(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    let ids: Vec<&String> = members.keys().collect();
    // The cursor persists across partitions and topics: that is what spreads the load.
    let mut cursor = 0usize;
    for topic in subscribed_topics(members) {
        let count = partitions.get(topic).copied().unwrap_or(0);
        for p in 0..count {
            // Terminates within one lap: the topic came from somebody's subscription.
            for _ in 0..ids.len() {
                let id = ids[cursor % ids.len()];
                cursor = (cursor + 1) % ids.len();
                if members.get(id).is_some_and(|subs| subs.contains(topic)) {
                    if let Some(set) = out.get_mut(id) {
                        set.insert(TopicPartition::new(topic, p));
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter()
            .map(|(id, topics)| {
                (
                    id.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn tps(list: &[(&str, u32)]) -> BTreeSet<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    /// Checks the properties every assignment must have, whatever the strategy.
    fn check_complete(
        m: &BTreeMap<String, BTreeSet<String>>,
        c: &BTreeMap<String, u32>,
        a: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) {
        assert_eq!(a.keys().collect::<Vec<_>>(), m.keys().collect::<Vec<_>>());
        let mut seen = BTreeSet::new();
        for (id, set) in a {
            for tp in set {
                assert!(
                    m[id].contains(&tp.topic),
                    "{id} got {tp} without subscribing"
                );
                assert!(seen.insert(tp.clone()), "{tp} assigned twice");
            }
        }
        let expected: BTreeSet<TopicPartition> = subscribed_topics(m)
            .into_iter()
            .flat_map(|t| {
                (0..c.get(t).copied().unwrap_or(0)).map(move |p| TopicPartition::new(t, p))
            })
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn range_kafka_example() {
        let m = members(&[("C0", &["t0", "t1"]), ("C1", &["t0", "t1"])]);
        let c = counts(&[("t0", 3), ("t1", 3)]);
        let a = Assignor::Range.assign(&m, &c);
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 2), ("t1", 2)]));
        check_complete(&m, &c, &a);
    }

    #[test]
    fn round_robin_kafka_example() {
        let m = members(&[("C0", &["t0", "t1"]), ("C1", &["t0", "t1"])]);
        let c = counts(&[("t0", 3), ("t1", 3)]);
        let a = Assignor::RoundRobin.assign(&m, &c);
        assert_eq!(a["C0"], tps(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(a["C1"], tps(&[("t0", 1), ("t1", 0), ("t1", 2)]));
        check_complete(&m, &c, &a);
    }

    #[test]
    fn round_robin_kafka_example_with_uneven_subscriptions() {
        // The second example of Kafka's RoundRobinAssignor javadoc.
        let m = members(&[
            ("C0", &["t0"]),
            ("C1", &["t0", "t1"]),
            ("C2", &["t0", "t1", "t2"]),
        ]);
        let c = counts(&[("t0", 1), ("t1", 2), ("t2", 3)]);
        let a = Assignor::RoundRobin.assign(&m, &c);
        assert_eq!(a["C0"], tps(&[("t0", 0)]));
        assert_eq!(a["C1"], tps(&[("t1", 0)]));
        assert_eq!(a["C2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
        check_complete(&m, &c, &a);
    }

    #[test]
    fn range_gives_extras_to_the_first_members() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let c = counts(&[("t", 7)]);
        let a = Assignor::Range.assign(&m, &c);
        assert_eq!(a["a"], tps(&[("t", 0), ("t", 1), ("t", 2)]));
        assert_eq!(a["b"], tps(&[("t", 3), ("t", 4)]));
        assert_eq!(a["c"], tps(&[("t", 5), ("t", 6)]));
        check_complete(&m, &c, &a);
    }

    #[test]
    fn range_with_fewer_partitions_than_members() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let c = counts(&[("t", 2)]);
        let a = Assignor::Range.assign(&m, &c);
        assert_eq!(a["a"], tps(&[("t", 0)]));
        assert_eq!(a["b"], tps(&[("t", 1)]));
        assert!(a["c"].is_empty());
        check_complete(&m, &c, &a);
    }

    #[test]
    fn range_only_splits_a_topic_among_its_subscribers() {
        let m = members(&[("a", &["t0"]), ("b", &["t0", "t1"]), ("c", &[])]);
        let c = counts(&[("t0", 2), ("t1", 2), ("unsubscribed", 5)]);
        let a = Assignor::Range.assign(&m, &c);
        assert_eq!(a["a"], tps(&[("t0", 0)]));
        assert_eq!(a["b"], tps(&[("t0", 1), ("t1", 0), ("t1", 1)]));
        assert!(a["c"].is_empty());
        check_complete(&m, &c, &a);
    }

    #[test]
    fn unknown_topics_and_empty_groups_assign_nothing() {
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let m = members(&[("a", &["missing"])]);
            let a = assignor.assign(&m, &counts(&[]));
            assert!(a["a"].is_empty());
            assert!(
                assignor
                    .assign(&BTreeMap::new(), &counts(&[("t", 3)]))
                    .is_empty()
            );
        }
    }

    #[test]
    fn assignment_is_deterministic_and_complete() {
        let m = members(&[
            ("m3", &["a", "b"]),
            ("m1", &["b", "c"]),
            ("m2", &["a", "c"]),
            ("m4", &["c"]),
        ]);
        let c = counts(&[("a", 5), ("b", 4), ("c", 9)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let first = assignor.assign(&m, &c);
            assert_eq!(first, assignor.assign(&m.clone(), &c.clone()));
            check_complete(&m, &c, &first);
        }
    }

    #[test]
    fn names_parse_and_display() {
        assert_eq!("range".parse::<Assignor>(), Ok(Assignor::Range));
        assert_eq!("roundrobin".parse::<Assignor>(), Ok(Assignor::RoundRobin));
        assert_eq!("Round-Robin".parse::<Assignor>(), Ok(Assignor::RoundRobin));
        assert!("sticky".parse::<Assignor>().is_err());
        for a in [Assignor::Range, Assignor::RoundRobin] {
            assert_eq!(a.to_string().parse::<Assignor>(), Ok(a));
        }
        assert_eq!(TopicPartition::new("orders", 3).to_string(), "orders-3");
    }
}

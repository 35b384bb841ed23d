//! Incremental fetch sessions (KIP-227): a client that opens a session sends, after the
//! first full request, only the partitions whose fetch position changed, and gets back only
//! the partitions that have records or whose offsets moved.
//!
//! Sessions live in the broker, keyed by id, at most [`MAX_SESSIONS`] (the least recently
//! used is evicted; its client gets `FETCH_SESSION_ID_NOT_FOUND` and starts a new one).
//! librdkafka never opens one (it sends session id 0, epoch -1: sessionless); kafka-python 3
//! and the Java client do.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};

use super::s;

/// Sessions kept at once (Kafka's `max.incremental.fetch.session.cache.slots`).
pub(crate) const MAX_SESSIONS: usize = 1000;
/// Partitions one session may hold.
const MAX_PARTITIONS: usize = 10_000;

/// A session's view of one partition: where the client reads, and what it was last told.
#[derive(Debug, Clone)]
struct Cached {
    fetch_offset: i64,
    max_bytes: i32,
    log_start_offset: i64,
    high_watermark: i64,
    last_stable_offset: i64,
}

#[derive(Debug)]
struct Session {
    next_epoch: i32,
    partitions: BTreeMap<(String, i32), Cached>,
    used: Instant,
}

/// Every open session.
#[derive(Debug, Default)]
pub(crate) struct FetchSessions {
    sessions: HashMap<i32, Session>,
}

/// How a fetch is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// No session: every requested partition, session id 0.
    Sessionless,
    /// Session `id`: every partition (`full`, the request that opened it) or the changes.
    Session { id: i32, full: bool },
}

impl FetchSessions {
    /// Reads the request's session fields: opens, continues or closes a session. For a
    /// continued one, `req.topics` becomes the session's whole partition list. Errors are the
    /// fetch's top-level error code.
    pub(crate) fn begin(&mut self, req: &mut FetchRequest) -> Result<Plan, i16> {
        match (req.session_id, req.session_epoch) {
            // Epoch -1: no session wanted (and an existing one closes).
            (id, -1) => {
                self.sessions.remove(&id);
                Ok(Plan::Sessionless)
            }
            // Epoch 0 opens a new session; with an id it first closes that one (a client
            // starting over after an error, as Java's does).
            (id, 0) => {
                self.sessions.remove(&id);
                let partitions = cache(req, BTreeMap::new());
                if partitions.len() > MAX_PARTITIONS {
                    return Ok(Plan::Sessionless);
                }
                if self.sessions.len() >= MAX_SESSIONS {
                    if let Some(oldest) = self
                        .sessions
                        .iter()
                        .min_by_key(|(_, s)| s.used)
                        .map(|(id, _)| *id)
                    {
                        self.sessions.remove(&oldest);
                    }
                }
                let id = self.new_id();
                self.sessions.insert(
                    id,
                    Session {
                        next_epoch: 1,
                        partitions,
                        used: Instant::now(),
                    },
                );
                Ok(Plan::Session { id, full: true })
            }
            (0, _) => Err(E::FetchSessionIdNotFound.code()),
            (id, epoch) => {
                let session = self
                    .sessions
                    .get_mut(&id)
                    .ok_or(E::FetchSessionIdNotFound.code())?;
                if epoch != session.next_epoch {
                    return Err(E::InvalidFetchSessionEpoch.code());
                }
                session.next_epoch = epoch.checked_add(1).unwrap_or(1);
                for t in &req.forgotten_topics_data {
                    for p in &t.partitions {
                        session.partitions.remove(&(t.topic.0.to_string(), *p));
                    }
                }
                let partitions = cache(req, std::mem::take(&mut session.partitions));
                if partitions.len() > MAX_PARTITIONS {
                    self.sessions.remove(&id);
                    return Err(E::InvalidRequest.code());
                }
                let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
                for ((topic, partition), c) in &partitions {
                    topics.entry(topic).or_default().push(
                        FetchPartition::default()
                            .with_partition(*partition)
                            .with_fetch_offset(c.fetch_offset)
                            .with_partition_max_bytes(c.max_bytes),
                    );
                }
                req.topics = topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(s(t.to_string())))
                            .with_partitions(ps)
                    })
                    .collect();
                session.partitions = partitions;
                Ok(Plan::Session { id, full: false })
            }
        }
    }

    /// Shapes the answer for the session: only changed partitions unless `full`; remembers
    /// what the client was told.
    pub(crate) fn finish(&mut self, plan: Plan, resp: &mut FetchResponse) {
        let Plan::Session { id, full } = plan else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&id) else {
            // Evicted meanwhile: the client learns it on its next request.
            return;
        };
        for t in &mut resp.responses {
            let topic = t.topic.0.to_string();
            t.partitions.retain(|p| {
                let Some(c) = session
                    .partitions
                    .get_mut(&(topic.clone(), p.partition_index))
                else {
                    return full;
                };
                let moved = c.high_watermark != p.high_watermark
                    || c.last_stable_offset != p.last_stable_offset
                    || c.log_start_offset != p.log_start_offset;
                c.high_watermark = p.high_watermark;
                c.last_stable_offset = p.last_stable_offset;
                c.log_start_offset = p.log_start_offset;
                full || moved
                    || p.error_code != 0
                    || p.records.as_ref().is_some_and(|r| !r.is_empty())
            });
        }
        if !full {
            resp.responses.retain(|t| !t.partitions.is_empty());
        }
        session.used = Instant::now();
        resp.session_id = id;
    }

    /// A random positive id not in use: one client cannot guess (and close or use) another's.
    fn new_id(&mut self) -> i32 {
        loop {
            let id = (crate::sasl::random_u64() & 0x7fff_ffff) as i32;
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }
}

/// The request's partitions added to (or updated in) `into`.
fn cache(
    req: &FetchRequest,
    mut into: BTreeMap<(String, i32), Cached>,
) -> BTreeMap<(String, i32), Cached> {
    for t in &req.topics {
        for p in &t.partitions {
            let key = (t.topic.0.to_string(), p.partition);
            let e = into.entry(key).or_insert(Cached {
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                log_start_offset: -1,
                high_watermark: -1,
                last_stable_offset: -1,
            });
            e.fetch_offset = p.fetch_offset;
            e.max_bytes = p.partition_max_bytes;
        }
    }
    into
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};

    fn request(id: i32, epoch: i32, parts: &[(&str, i32, i64)]) -> FetchRequest {
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for (t, p, o) in parts {
            topics.entry(t).or_default().push(
                FetchPartition::default()
                    .with_partition(*p)
                    .with_fetch_offset(*o)
                    .with_partition_max_bytes(1 << 20),
            );
        }
        FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        FetchTopic::default()
                            .with_topic(TopicName(s(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            )
    }

    /// The answer the log would give: `hw` per partition, records where `data`.
    fn answer(req: &FetchRequest, hw: i64, data: &[(&str, i32)]) -> FetchResponse {
        FetchResponse::default().with_responses(
            req.topics
                .iter()
                .map(|t| {
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let has = data.contains(&(t.topic.0.as_str(), p.partition));
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_high_watermark(hw)
                                        .with_last_stable_offset(hw)
                                        .with_log_start_offset(0)
                                        .with_records(Some(if has {
                                            bytes::Bytes::from_static(b"batch")
                                        } else {
                                            bytes::Bytes::new()
                                        }))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    fn answered(resp: &FetchResponse) -> Vec<(String, i32)> {
        resp.responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.0.to_string(), p.partition_index))
            })
            .collect()
    }

    #[test]
    fn a_session_answers_everything_first_then_only_changes() {
        let mut sessions = FetchSessions::default();
        let mut req = request(0, 0, &[("a", 0, 0), ("a", 1, 0), ("b", 0, 0)]);
        let plan = sessions.begin(&mut req).unwrap();
        let Plan::Session { id, full: true } = plan else {
            panic!("{plan:?}")
        };
        let mut resp = answer(&req, 5, &[("a", 0)]);
        sessions.finish(plan, &mut resp);
        assert_eq!(resp.session_id, id);
        assert_eq!(answered(&resp).len(), 3, "the first answer is full");

        // Epoch 1 names only a-0 (its position moved); the session reads all three and
        // answers only the partition with records.
        let mut req = request(id, 1, &[("a", 0, 5)]);
        let plan = sessions.begin(&mut req).unwrap();
        assert_eq!(
            answered(&answer(&req, 0, &[])).len(),
            3,
            "the read covers the session"
        );
        let mut resp = answer(&req, 5, &[("b", 0)]);
        sessions.finish(plan, &mut resp);
        assert_eq!(answered(&resp), vec![("b".to_string(), 0)]);

        // A moved high watermark is a change too; a forgotten partition is gone.
        let mut req = request(id, 2, &[]);
        req.forgotten_topics_data = vec![
            ForgottenTopic::default()
                .with_topic(TopicName(s("a")))
                .with_partitions(vec![1]),
        ];
        let plan = sessions.begin(&mut req).unwrap();
        let mut resp = answer(&req, 6, &[]);
        sessions.finish(plan, &mut resp);
        assert_eq!(
            answered(&resp),
            vec![("a".to_string(), 0), ("b".to_string(), 0)]
        );

        // Wrong epochs and unknown ids are refused; epoch -1 closes the session.
        assert_eq!(
            sessions.begin(&mut request(id, 9, &[])),
            Err(E::InvalidFetchSessionEpoch.code())
        );
        assert_eq!(
            sessions.begin(&mut request(77, 1, &[])),
            Err(E::FetchSessionIdNotFound.code())
        );
        assert_eq!(
            sessions.begin(&mut request(id, -1, &[])),
            Ok(Plan::Sessionless)
        );
        assert_eq!(
            sessions.begin(&mut request(id, 3, &[])),
            Err(E::FetchSessionIdNotFound.code())
        );
    }

    #[test]
    fn sessions_are_bounded_by_evicting_the_least_recently_used() {
        let mut sessions = FetchSessions::default();
        let mut first = None;
        for _ in 0..=MAX_SESSIONS {
            let mut req = request(0, 0, &[("a", 0, 0)]);
            let plan = sessions.begin(&mut req).unwrap();
            let mut resp = answer(&req, 0, &[]);
            sessions.finish(plan, &mut resp);
            first.get_or_insert(resp.session_id);
        }
        assert_eq!(sessions.sessions.len(), MAX_SESSIONS);
        let first = first.unwrap();
        assert_eq!(
            sessions.begin(&mut request(first, 1, &[])),
            Err(E::FetchSessionIdNotFound.code())
        );
    }
}

//! The transaction coordinator's state machine: producer ids and epochs per transactional id,
//! the partitions each open transaction touched, and the two-phase end of a transaction.
//!
//! ```text
//!  init ──► Empty ──add partitions──► Ongoing ──end(commit)──► PrepareCommit ─markers─► CompleteCommit
//!                                        │      └─end(abort)/timeout─► PrepareAbort ─markers─► CompleteAbort
//!                                        └── init by a newer instance: epoch+1, abort (zombie fencing)
//! ```
//!
//! Pure: every method takes the time and returns what the shell must persist (a
//! [`TxnRecord`] for `__transaction_state`) and which markers to write. The decision of a
//! transaction is the durable `Prepare*` record; markers and `Complete*` follow and are redone
//! after a crash.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A partition a transaction wrote to: (topic, partition).
pub type TxnPartition = (String, u32);

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// No transaction open.
    Empty,
    /// Records are being written.
    Ongoing,
    /// Decided to commit; markers are being written.
    PrepareCommit,
    /// Decided to abort; markers are being written.
    PrepareAbort,
    /// Committed.
    CompleteCommit,
    /// Aborted.
    CompleteAbort,
}

/// The persisted state of one transactional id (the value in `__transaction_state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// The user's transactional id.
    pub transactional_id: String,
    /// Producer id owned by it.
    pub producer_id: i64,
    /// Current epoch; a newer instance bumps it.
    pub epoch: i16,
    /// State.
    pub status: TxnStatus,
    /// Partitions written by the open transaction.
    pub partitions: BTreeSet<TxnPartition>,
    /// Timeout of the open transaction.
    pub timeout_ms: u64,
    /// When the open transaction started (ms).
    pub started_ms: i64,
    /// Kept in a cluster's replicated topic rather than this log's `__transaction_state`: a
    /// Kafka client's transactional id, whose coordinator moves between nodes
    /// ([`crate::log::TxnReplication`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicated: bool,
}

impl TxnRecord {
    /// The record that persists it (in `__transaction_state`, or a cluster's replicated
    /// topic): the transactional id as key, JSON as value.
    pub fn to_record(&self) -> crate::Record {
        crate::Record {
            key: Some(bytes::Bytes::from(self.transactional_id.clone())),
            value: Some(bytes::Bytes::from(
                serde_json::to_vec(self).unwrap_or_default(),
            )),
            headers: Vec::new(),
            timestamp: crate::record::now_ms(),
        }
    }

    /// Reads a record's value written by [`Self::to_record`]; `None` for anything else.
    pub fn from_value(value: &[u8]) -> Option<TxnRecord> {
        serde_json::from_slice(value).ok()
    }
}

/// Errors of the transaction protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// Unknown transactional id (init was not called).
    #[error("transactional id '{0}' is unknown: call init first")]
    Unknown(String),
    /// A newer producer instance exists.
    #[error("producer epoch {epoch} of '{id}' is fenced by epoch {current}")]
    Fenced {
        /// Transactional id.
        id: String,
        /// Fenced epoch.
        epoch: i16,
        /// Current epoch.
        current: i16,
    },
    /// The call is not valid in the current state.
    #[error("transaction '{id}' is {status:?}: {reason}")]
    InvalidState {
        /// Transactional id.
        id: String,
        /// Current status.
        status: TxnStatus,
        /// What was attempted.
        reason: &'static str,
    },
}

/// What ending a transaction requires from the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndPlan {
    /// Persist this (the Prepare record) before writing any marker.
    pub prepare: TxnRecord,
    /// Write a marker to each of these.
    pub partitions: BTreeSet<TxnPartition>,
    /// Commit or abort markers.
    pub commit: bool,
    /// Producer id and epoch for the markers.
    pub producer_id: i64,
    /// Epoch of the markers.
    pub epoch: i16,
}

/// All transactional ids of one log.
#[derive(Debug, Default)]
pub struct TxnCoordinator {
    txns: BTreeMap<String, TxnRecord>,
}

impl TxnCoordinator {
    /// Loads a record replayed from `__transaction_state` (the latest per id wins).
    pub fn load(&mut self, rec: TxnRecord) {
        self.txns.insert(rec.transactional_id.clone(), rec);
    }

    /// Records not yet complete after a replay: the shell finishes them (Prepare* as decided,
    /// Ongoing as aborted, since no producer survives a restart of an embedded log).
    pub fn unfinished(&self) -> Vec<TxnRecord> {
        self.txns
            .values()
            .filter(|r| {
                matches!(
                    r.status,
                    TxnStatus::Ongoing | TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
                )
            })
            .cloned()
            .collect()
    }

    /// The record of an id.
    pub fn get(&self, id: &str) -> Option<&TxnRecord> {
        self.txns.get(id)
    }

    /// Whether `producer_id` has a transaction open at `epoch`.
    pub fn is_open(&self, producer_id: i64, epoch: i16) -> bool {
        self.txns.values().any(|r| {
            r.producer_id == producer_id && r.epoch == epoch && r.status == TxnStatus::Ongoing
        })
    }

    /// The status of the transaction (if any) owned by a producer id.
    pub fn status_of_producer(&self, producer_id: i64) -> Option<TxnStatus> {
        self.txns
            .values()
            .find(|r| r.producer_id == producer_id)
            .map(|r| r.status)
    }

    /// Whether this coordinator has a transactional id with this producer id.
    pub fn knows_producer(&self, producer_id: i64) -> bool {
        self.txns.values().any(|r| r.producer_id == producer_id)
    }

    /// Whether the open transaction of `producer_id` (at `epoch`) includes `partition`: what a
    /// transactional write there needs, or its markers would never come.
    pub fn includes(&self, producer_id: i64, epoch: i16, partition: &TxnPartition) -> bool {
        self.txns.values().any(|r| {
            r.producer_id == producer_id
                && r.epoch == epoch
                && r.status == TxnStatus::Ongoing
                && r.partitions.contains(partition)
        })
    }

    /// Starts a producer instance. Returns the new record (persist it) and, when a previous
    /// instance left a transaction open, the plan to abort it first under the new epoch.
    ///
    /// `new_producer_id` is called when the id is new or its epoch is exhausted.
    pub fn init(
        &mut self,
        id: &str,
        timeout_ms: u64,
        new_producer_id: impl FnOnce() -> i64,
    ) -> Result<(TxnRecord, Option<EndPlan>), TxnError> {
        let rec = match self.txns.get(id) {
            None => TxnRecord {
                transactional_id: id.to_string(),
                producer_id: new_producer_id(),
                epoch: 0,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                timeout_ms,
                started_ms: 0,
                replicated: false,
            },
            Some(old) => {
                if matches!(
                    old.status,
                    TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
                ) {
                    return Err(TxnError::InvalidState {
                        id: id.into(),
                        status: old.status,
                        reason: "a previous transaction is still completing; retry",
                    });
                }
                let (producer_id, epoch) = if old.epoch == i16::MAX {
                    (new_producer_id(), 0)
                } else {
                    (old.producer_id, old.epoch + 1)
                };
                let mut rec = old.clone();
                rec.producer_id = producer_id;
                rec.epoch = epoch;
                rec.timeout_ms = timeout_ms;
                rec
            }
        };
        let abort = if rec.status == TxnStatus::Ongoing {
            let old_pid = self.txns.get(id).map_or(rec.producer_id, |o| o.producer_id);
            // Markers carry the new epoch when the producer id is unchanged, so the old
            // instance's appends are refused from then on.
            let epoch = if old_pid == rec.producer_id {
                rec.epoch
            } else {
                i16::MAX
            };
            // The abort's own record names the producer and epoch its markers carry, so
            // whoever reads it (recovery, a new coordinator) ends the right transaction.
            let mut prepare = rec.clone();
            prepare.status = TxnStatus::PrepareAbort;
            prepare.producer_id = old_pid;
            prepare.epoch = epoch;
            Some(EndPlan {
                partitions: rec.partitions.clone(),
                prepare,
                commit: false,
                producer_id: old_pid,
                epoch,
            })
        } else {
            None
        };
        let mut fresh = rec;
        fresh.status = TxnStatus::Empty;
        fresh.partitions.clear();
        self.txns.insert(id.to_string(), fresh.clone());
        Ok((fresh, abort))
    }

    fn check(&self, id: &str, producer_id: i64, epoch: i16) -> Result<&TxnRecord, TxnError> {
        let rec = self
            .txns
            .get(id)
            .ok_or_else(|| TxnError::Unknown(id.into()))?;
        // Equal epochs only: a made-up higher epoch must not end the live instance's work.
        if rec.producer_id != producer_id || epoch != rec.epoch {
            return Err(TxnError::Fenced {
                id: id.into(),
                epoch,
                current: rec.epoch,
            });
        }
        Ok(rec)
    }

    /// Adds partitions to the open transaction (opening it if needed). Returns the record to
    /// persist when something changed — it must be durable before the producer writes there.
    pub fn add_partitions(
        &mut self,
        now_ms: i64,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TxnPartition],
    ) -> Result<Option<TxnRecord>, TxnError> {
        let rec = self.check(id, producer_id, epoch)?;
        if matches!(
            rec.status,
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
        ) {
            return Err(TxnError::InvalidState {
                id: id.into(),
                status: rec.status,
                reason: "the previous transaction is still completing; retry",
            });
        }
        if rec.status == TxnStatus::Ongoing && partitions.iter().all(|p| rec.partitions.contains(p))
        {
            return Ok(None);
        }
        let mut rec = rec.clone();
        if rec.status != TxnStatus::Ongoing {
            rec.status = TxnStatus::Ongoing;
            rec.started_ms = now_ms;
            rec.partitions.clear();
        }
        rec.partitions.extend(partitions.iter().cloned());
        self.txns.insert(id.into(), rec.clone());
        Ok(Some(rec))
    }

    /// Decides the end of a transaction. `None` when nothing was written (commit of an empty
    /// transaction is a no-op).
    pub fn end(
        &mut self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<Option<EndPlan>, TxnError> {
        let rec = self.check(id, producer_id, epoch)?;
        match rec.status {
            TxnStatus::Ongoing => {}
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                return Ok(None);
            }
            status => {
                return Err(TxnError::InvalidState {
                    id: id.into(),
                    status,
                    reason: "the transaction is already completing",
                });
            }
        }
        let mut prepare = rec.clone();
        prepare.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        self.txns.insert(id.into(), prepare.clone());
        Ok(Some(EndPlan {
            partitions: prepare.partitions.clone(),
            producer_id: prepare.producer_id,
            epoch: prepare.epoch,
            prepare,
            commit,
        }))
    }

    /// Marks a planned end as done; returns the record to persist. `None` when the id's
    /// record is no longer at that producer and epoch (it moved on meanwhile).
    pub fn complete(
        &mut self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Option<TxnRecord> {
        let rec = self
            .txns
            .get_mut(id)
            .filter(|r| r.producer_id == producer_id && r.epoch == epoch)?;
        rec.status = if commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        rec.partitions.clear();
        Some(rec.clone())
    }

    /// Transactions open longer than their timeout: each gets its epoch bumped (fencing the
    /// producer) and is planned for abort.
    pub fn expire(&mut self, now_ms: i64) -> Vec<(String, EndPlan)> {
        self.expired(now_ms)
            .into_iter()
            .filter_map(|(id, _)| Some((id.clone(), self.expire_one(&id, now_ms)?)))
            .collect()
    }

    /// The ids whose open transaction passed its timeout, and whether each is replicated
    /// (nothing changes: [`Self::expire_one`] does, one at a time).
    pub fn expired(&self, now_ms: i64) -> Vec<(String, bool)> {
        self.txns
            .values()
            .filter(|r| Self::is_expired(r, now_ms))
            .map(|r| (r.transactional_id.clone(), r.replicated))
            .collect()
    }

    /// Bumps the epoch of `id` (fencing its producer) and plans the abort, if its open
    /// transaction (still) passed its timeout.
    pub fn expire_one(&mut self, id: &str, now_ms: i64) -> Option<EndPlan> {
        let rec = self
            .txns
            .get_mut(id)
            .filter(|r| Self::is_expired(r, now_ms))?;
        rec.epoch += 1;
        rec.status = TxnStatus::PrepareAbort;
        Some(EndPlan {
            prepare: rec.clone(),
            partitions: rec.partitions.clone(),
            commit: false,
            producer_id: rec.producer_id,
            epoch: rec.epoch,
        })
    }

    fn is_expired(r: &TxnRecord, now_ms: i64) -> bool {
        r.status == TxnStatus::Ongoing
            && now_ms - r.started_ms > r.timeout_ms as i64
            && r.epoch < i16::MAX
    }

    /// All records (for describe).
    pub fn list(&self) -> Vec<TxnRecord> {
        self.txns.values().cloned().collect()
    }

    /// Drops the replicated records of the ids `mine` selects (another node coordinates
    /// them now, or their records are read again); their ids.
    pub fn forget_replicated(&mut self, mine: &dyn Fn(&str) -> bool) -> Vec<String> {
        let gone: Vec<String> = self
            .txns
            .values()
            .filter(|r| r.replicated && mine(&r.transactional_id))
            .map(|r| r.transactional_id.clone())
            .collect();
        for id in &gone {
            self.txns.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: u32) -> TxnPartition {
        (t.to_string(), p)
    }

    #[test]
    fn commit_flow() {
        let mut c = TxnCoordinator::default();
        let (rec, abort) = c.init("t1", 1000, || 7).unwrap();
        assert_eq!((rec.producer_id, rec.epoch, abort), (7, 0, None));
        let r = c
            .add_partitions(10, "t1", 7, 0, &[tp("a", 0)])
            .unwrap()
            .unwrap();
        assert_eq!(r.status, TxnStatus::Ongoing);
        assert_eq!(
            c.add_partitions(11, "t1", 7, 0, &[tp("a", 0)]).unwrap(),
            None
        );
        let plan = c.end("t1", 7, 0, true).unwrap().unwrap();
        assert_eq!(plan.prepare.status, TxnStatus::PrepareCommit);
        assert_eq!(plan.partitions.len(), 1);
        assert_eq!(c.complete("t1", 7, 1, true), None, "another epoch's end");
        assert_eq!(
            c.complete("t1", 7, 0, true).unwrap().status,
            TxnStatus::CompleteCommit
        );
        assert_eq!(c.end("t1", 7, 0, true).unwrap(), None);
    }

    #[test]
    fn newer_instance_fences_and_aborts() {
        let mut c = TxnCoordinator::default();
        c.init("t1", 1000, || 7).unwrap();
        c.add_partitions(10, "t1", 7, 0, &[tp("a", 0), tp("b", 1)])
            .unwrap();
        let (rec, abort) = c.init("t1", 1000, || 8).unwrap();
        assert_eq!((rec.producer_id, rec.epoch), (7, 1));
        let abort = abort.unwrap();
        assert!(!abort.commit);
        assert_eq!(abort.epoch, 1);
        assert_eq!(abort.partitions.len(), 2);
        let err = c.add_partitions(20, "t1", 7, 0, &[tp("a", 0)]).unwrap_err();
        assert!(matches!(err, TxnError::Fenced { current: 1, .. }));
        assert!(matches!(
            c.end("t1", 7, 0, true),
            Err(TxnError::Fenced { .. })
        ));
    }

    #[test]
    fn timeout_bumps_epoch_and_aborts() {
        let mut c = TxnCoordinator::default();
        c.init("t1", 100, || 3).unwrap();
        c.add_partitions(1000, "t1", 3, 0, &[tp("a", 0)]).unwrap();
        assert!(c.expire(1050).is_empty());
        let expired = c.expire(1101);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].1.epoch, 1);
        assert!(matches!(
            c.end("t1", 3, 0, true),
            Err(TxnError::Fenced { .. })
        ));
    }

    #[test]
    fn unfinished_after_replay() {
        let mut c = TxnCoordinator::default();
        let (mut rec, _) = c.init("t1", 100, || 3).unwrap();
        rec.status = TxnStatus::PrepareCommit;
        rec.partitions.insert(tp("a", 0));
        let mut c2 = TxnCoordinator::default();
        c2.load(rec);
        assert_eq!(c2.unfinished().len(), 1);
    }
}

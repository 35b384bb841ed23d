//! The transaction shell: producer ids, `__transaction_state` and the one executor of the coordinator's end plans.

use std::sync::Arc;
use std::time::Duration;

use super::{Log, Topic};
use crate::batch::{BatchBuilder, BatchOptions};
use crate::error::{LogError, Result};
use crate::group::TopicPartition;
use crate::offsets::CommittedOffset;
use crate::offsets::OFFSETS_TOPIC;
use crate::partition::AppendInfo;
use crate::record::now_ms;
use crate::segment::write_file;
use crate::txn::{EndPlan, TxnError, TxnPartition, TxnRecord, TxnStatus};

/// Name of the internal transaction-state topic.
pub const TXN_TOPIC: &str = "__transaction_state";

/// Producer ids are handed out in blocks; the end of the current block is persisted before
/// any id of it is used, so a crash never reuses one.
const PID_BLOCK: i64 = super::PRODUCER_ID_BLOCK;

impl Log {
    pub(super) fn load_pid_block(&self) -> Result<()> {
        let path = self.inner.dir.join("producer-ids");
        let start = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<i64>().map_err(|e| LogError::Corrupt {
                path: path.clone(),
                position: 0,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(LogError::io("read", &path, e)),
        };
        *self.inner.next_pid.lock() = (start, start);
        Ok(())
    }

    /// Takes producer ids from `source` from now on (a cluster's, so that ids are unique
    /// across its nodes: two producers sharing an id would see each other's records as
    /// duplicates).
    pub fn set_producer_id_source(&self, source: super::ProducerIdSource) {
        *self.inner.pid_source.write() = Some(source);
        *self.inner.next_pid.lock() = (0, 0);
    }

    /// Lets `gate` refuse the embedded producer's writes from now on (a cluster's replication
    /// layer: only partition leaders write, `acks=all` needs `min.insync.replicas`).
    pub fn set_write_gate(&self, gate: Arc<dyn super::WriteGate>) {
        *self.inner.write_gate.write() = Some(super::Gate(gate));
    }

    /// Sends the markers of transactions in partitions another node leads through `markers`
    /// from now on (a cluster).
    pub fn set_remote_markers(&self, markers: Arc<dyn super::RemoteMarkers>) {
        *self.inner.remote_markers.write() = Some(super::Markers(markers));
    }

    /// Keeps the records of replicated transactional ids (a Kafka client's, in a cluster)
    /// through `replication` from now on.
    pub fn set_txn_replication(&self, replication: Arc<dyn super::TxnReplication>) {
        *self.inner.txn_log.write() = Some(super::TxnLog(replication));
    }

    /// Runs `change` of a replicated id's records as the node coordinating it: under the
    /// replication's lock of its partition, once the node is ready to
    /// ([`super::TxnReplication::acquire`]). Without a cluster, just `change`.
    pub(crate) fn coordinated<T>(&self, id: &str, change: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(hook) = self.inner.txn_log.read().clone() else {
            return change();
        };
        let lock = hook.0.lock(id);
        let _held = lock.lock();
        hook.0.acquire(id)?;
        change()
    }

    /// Takes the replicated records of the transactional ids `mine` selects as this node's
    /// coordinator's (a cluster: this node just took the leadership of their partition),
    /// replacing what it held of them. Their transactions already decided are ended
    /// (markers, then completion) by housekeeping, within a second; open ones go on with
    /// their producers, or are aborted when their timeout passes. The number of ids.
    pub fn import_transactions(
        &self,
        mine: &dyn Fn(&str) -> bool,
        records: Vec<TxnRecord>,
    ) -> usize {
        let n = records.len();
        let mut coord = self.inner.txns.lock();
        let mut ends = self.inner.unfinished_ends.lock();
        coord.forget_replicated(mine);
        ends.retain(|(id, plan)| !(plan.prepare.replicated && mine(id)));
        for mut rec in records {
            rec.replicated = true;
            if matches!(
                rec.status,
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
            ) {
                let plan = EndPlan {
                    partitions: rec.partitions.clone(),
                    commit: rec.status == TxnStatus::PrepareCommit,
                    producer_id: rec.producer_id,
                    epoch: rec.epoch,
                    prepare: rec.clone(),
                };
                ends.push((rec.transactional_id.clone(), plan));
            }
            coord.load(rec);
        }
        n
    }

    /// Drops the replicated records of the transactional ids `mine` selects, and their
    /// queued ends (a cluster: another node coordinates them now, or they are to be read
    /// again from the replicated topic).
    pub fn forget_transactions(&self, mine: &dyn Fn(&str) -> bool) {
        let mut coord = self.inner.txns.lock();
        coord.forget_replicated(mine);
        self.inner
            .unfinished_ends
            .lock()
            .retain(|(id, plan)| !(plan.prepare.replicated && mine(id)));
    }

    /// Writes a marker ending `producer_id`'s transaction in `topic`-`partition`, led here,
    /// for another node's transaction coordinator (Kafka's WriteTxnMarkers): the marker's
    /// offset and the leader epoch it was written in; `None` when the producer has no
    /// transaction open there (ended already).
    pub fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<Option<(i64, i32)>> {
        self.check_open()?;
        let p = self.partition(topic, partition)?;
        let leader_epoch = p.leader_epoch();
        let offset = p.append_marker(producer_id, epoch, commit, coordinator_epoch)?;
        self.notify_appended();
        Ok(offset.map(|o| (o, leader_epoch)))
    }

    /// Ends `producer_id`'s transaction in this node's `__consumer_offsets` for another
    /// node's transaction coordinator: a marker in every partition where it has offsets
    /// pending, and (committed) the offsets it wrote; those offsets by group.
    pub fn settle_offsets(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<Vec<(String, TopicPartition, i64)>> {
        self.check_open()?;
        let topic = self.topic(OFFSETS_TOPIC)?;
        for p in topic.partitions.read().iter() {
            if p.open_transactions().contains(&producer_id) {
                // A former coordinator's delayed marker is refused here (before any offset
                // is settled), as in any partition.
                p.append_marker(producer_id, epoch, commit, coordinator_epoch)?;
            }
        }
        let settled = self.inner.offsets.lock().end_txn(producer_id, commit);
        self.notify_appended();
        Ok(settled)
    }

    /// Asks the write gate, if any, whether a write of `topic`-`partition` may go ahead.
    pub(crate) fn check_write(&self, topic: &str, partition: u32, all: bool) -> Result<()> {
        let gate = self.inner.write_gate.read().clone();
        match gate {
            Some(g) => g.0.check(topic, partition, all),
            None => Ok(()),
        }
    }

    pub(crate) fn allocate_producer_id(&self) -> Result<i64> {
        let mut g = self.inner.next_pid.lock();
        let source = self.inner.pid_source.read().clone();
        if let Some(source) = source {
            if g.0 >= g.1 {
                let start = (source.0)().map_err(LogError::ClusterUnavailable)?;
                *g = (start, start + PID_BLOCK);
            }
            let id = g.0;
            g.0 += 1;
            return Ok(id);
        }
        if g.0 >= g.1 {
            let end = g.1.max(g.0) + PID_BLOCK;
            write_file(
                &self.inner.dir.join("producer-ids"),
                end.to_string().as_bytes(),
            )?;
            g.1 = end;
        }
        let id = g.0;
        g.0 += 1;
        Ok(id)
    }

    fn write_txn_record(&self, rec: &TxnRecord) -> Result<()> {
        if rec.replicated {
            let replication = self.inner.txn_log.read().clone();
            if let Some(r) = replication {
                return r.0.replicate(rec);
            }
        }
        self.append_records(TXN_TOPIC, 0, &[rec.to_record()])?;
        Ok(())
    }

    pub(super) fn recover_transactions(&self) -> Result<()> {
        let mut records = Vec::new();
        self.read_all(TXN_TOPIC, 0, |_, r| {
            if let Some(v) = r.value {
                if let Some(rec) = TxnRecord::from_value(&v) {
                    records.push(rec);
                }
            }
        })?;
        let mut coord = self.inner.txns.lock();
        for rec in records {
            coord.load(rec);
        }
        let unfinished = coord.unfinished();
        drop(coord);
        let clustered = self.has_replicas();
        for rec in unfinished {
            let commit = rec.status == TxnStatus::PrepareCommit;
            tracing::info!(transactional_id = %rec.transactional_id, commit, "Completing a transaction left open by a crash.");
            let plan = EndPlan {
                partitions: rec.partitions.clone(),
                commit,
                producer_id: rec.producer_id,
                epoch: rec.epoch,
                prepare: rec.clone(),
            };
            // In a cluster, markers for replicated partitions (all followers until the
            // cluster says otherwise) or partitions this node does not hold go through
            // their leaders, which the log can reach only once the cluster runs: later.
            let through_leaders = clustered
                && plan
                    .partitions
                    .iter()
                    .any(|(t, p)| self.partition(t, *p).map_or(true, |x| x.is_replica()));
            if through_leaders {
                self.inner
                    .unfinished_ends
                    .lock()
                    .push((rec.transactional_id.clone(), plan));
                continue;
            }
            // A partition of it may be a replica that another node leads now: the open
            // goes on (a failure is retried by housekeeping; in a cluster, once the markers
            // can go to the partitions' leaders), it must not fail for good.
            let _ = self.execute_end(&rec.transactional_id, &plan);
        }
        // Transactions open in partitions that the coordinator never recorded (a crash
        // between the data and its record cannot happen, but a bug must not hang readers
        // behind the last stable offset forever).
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in topics {
            for p in t.partitions.read().iter() {
                if p.is_replica() {
                    // Its transactions are its leader's to end (the markers come from there).
                    continue;
                }
                for pid in p.open_transactions() {
                    tracing::warn!(topic = %t.name, partition = p.id(), producer_id = pid, "Aborting an orphaned open transaction.");
                    // The producer's own epoch: aborting must not fence its id for good.
                    let epoch = p.producer_epoch(pid).unwrap_or(0);
                    p.append_marker(pid, epoch, false, 0)?;
                }
            }
        }
        Ok(())
    }

    /// Carries out an end plan of the coordinator: the one sequence that ends every
    /// transaction, whether committed, aborted by its producer, aborted because a new
    /// instance fenced it, aborted on timeout or finished after a crash or by a new
    /// coordinator.
    ///
    /// 1. persist the Prepare record (from here the decision survives a crash: recovery
    ///    replays it),
    /// 2. write a marker to each partition of the transaction,
    /// 3. settle the transaction's pending group offsets,
    /// 4. record the completion, and wake waiting readers.
    ///
    /// Only the plan the coordinator's record still stands at runs, and one at a time per
    /// id: a copy queued twice (an import while housekeeping runs it) or left from before
    /// (the record moved on) would otherwise write its marker into the producer's next
    /// transaction. An error before the Prepare record is durable is returned (and the end
    /// retried by housekeeping); after it, the end is retried and `Ok` returned, as the
    /// decision stands.
    ///
    /// Idempotent: markers go only where the producer still has a transaction open, so a
    /// plan replayed after a crash at any step ends the same way.
    fn execute_end(&self, id: &str, plan: &EndPlan) -> Result<()> {
        {
            let coord = self.inner.txns.lock();
            let current = coord.get(id).is_some_and(|r| {
                r.status == plan.prepare.status
                    && r.producer_id == plan.prepare.producer_id
                    && r.epoch == plan.prepare.epoch
            });
            if !current {
                tracing::debug!(transactional_id = %id, "Dropping a transaction's end its coordinator has moved past.");
                return Ok(());
            }
            if !self.inner.ending.lock().insert(id.to_string()) {
                // Under way on another thread, which finishes or queues it.
                return Ok(());
            }
        }
        let result = self.run_end(id, plan);
        self.inner.ending.lock().remove(id);
        let done = match result {
            Ok(done) => done,
            Err(ref e) => {
                tracing::warn!(transactional_id = %id, error = %e, "Cannot write or replicate a transaction's end yet; retrying.");
                false
            }
        };
        if !done {
            self.inner
                .unfinished_ends
                .lock()
                .push((id.to_string(), plan.clone()));
        }
        result.map(|_| ())
    }

    /// [`Self::execute_end`]'s steps: `Err` when the Prepare record did not persist,
    /// `Ok(false)` when the markers are still to be written or replicated.
    fn run_end(&self, id: &str, plan: &EndPlan) -> Result<bool> {
        self.write_txn_record(&plan.prepare)?;
        crate::fault::point("txn-after-prepare");
        // In a cluster, partitions led by other nodes (or held only there) get their
        // markers through their leaders.
        let markers = self.inner.remote_markers.read().clone();
        let mut remote = Vec::new();
        // Markers in replicated partitions led here: the end completes only once their
        // in-sync replicas have them, or a new leader could lack a marker the coordinator's
        // record says was written, and its transaction would stay open there.
        let mut replicated = Vec::new();
        let mut failed = None;
        let coordinator_epoch = match self.inner.txn_log.read().as_ref() {
            Some(r) if plan.prepare.replicated => match r.0.coordinator_epoch(id) {
                Ok(e) => e,
                Err(e) => {
                    // No longer the coordinator: retried, and dropped once another is.
                    tracing::debug!(transactional_id = %id, error = %e, "Not writing a transaction's markers: the coordinator moved.");
                    return Ok(false);
                }
            },
            _ => 0,
        };
        for (topic, partition) in &plan.partitions {
            if markers.as_ref().is_some_and(|m| m.0.owns(topic)) {
                remote.push((topic.clone(), *partition));
                continue;
            }
            match self.partition(topic, *partition) {
                Ok(p) if markers.is_some() && p.is_follower() => {
                    remote.push((topic.clone(), *partition));
                }
                Ok(p) => {
                    let epoch = p.leader_epoch();
                    let written = p.append_marker(
                        plan.producer_id,
                        plan.epoch,
                        plan.commit,
                        coordinator_epoch,
                    );
                    match written {
                        Ok(written) if markers.is_some() && p.is_replica() => {
                            let end = written.map_or_else(|| p.log_end_offset(), |o| o + 1);
                            replicated.push((p, end, epoch));
                        }
                        Ok(_) => {}
                        // A newer epoch of the producer ended it there already.
                        Err(LogError::ProducerFenced { .. }) => {}
                        // Anything else, a newer coordinator's fence included (this one is
                        // stale: it must not record the end as done), is retried, and dropped
                        // once this node sees it no longer coordinates the id.
                        Err(e) => failed = Some(e),
                    }
                }
                Err(LogError::UnknownTopic(_)) | Err(LogError::UnknownPartition { .. })
                    if markers.is_some() =>
                {
                    remote.push((topic.clone(), *partition));
                }
                // A topic deleted mid-transaction has nothing left to mark.
                Err(LogError::UnknownTopic(_)) | Err(LogError::UnknownPartition { .. }) => {}
                Err(e) => failed = Some(e),
            }
        }
        if !replicated.is_empty() {
            // Wakes the followers' long polls.
            self.notify_appended();
        }
        let local = replicated.iter().try_for_each(|(p, end, epoch)| {
            p.wait_high_watermark(*end, *epoch, Duration::from_secs(10))
        });
        let remote_written = match markers.filter(|_| !remote.is_empty()) {
            Some(m) => m.0.write(
                &remote,
                plan.producer_id,
                plan.epoch,
                plan.commit,
                coordinator_epoch,
            ),
            None => Ok(()),
        };
        if let Some(e) = failed.map(Err).unwrap_or(local).and(remote_written).err() {
            // The decision is durable (the Prepare record): the markers are written later,
            // as Kafka's coordinator does, and the transaction completes then.
            tracing::warn!(transactional_id = %id, error = %e, "Cannot write or replicate a transaction's markers yet; retrying.");
            return Ok(false);
        }
        crate::fault::point("txn-after-markers");
        self.inner
            .offsets
            .lock()
            .end_txn(plan.producer_id, plan.commit);
        let done = self.inner.txns.lock().complete(
            id,
            plan.prepare.producer_id,
            plan.prepare.epoch,
            plan.commit,
        );
        if let Some(done) = done {
            self.write_txn_record(&done)?;
        }
        self.notify_appended();
        Ok(true)
    }

    /// Retries the ends whose markers on other nodes could not be written.
    pub(super) fn retry_unfinished_ends(&self) -> Result<()> {
        if self.inner.unfinished_ends.lock().is_empty()
            || (self.inner.remote_markers.read().is_none() && self.has_replicas())
        {
            // Nothing to do, or the cluster is not running yet.
            return Ok(());
        }
        let ends = std::mem::take(&mut *self.inner.unfinished_ends.lock());
        let replication = self.inner.txn_log.read().clone();
        for (id, plan) in ends {
            let lock = match &replication {
                Some(r) if plan.prepare.replicated => {
                    if !r.0.coordinates(&id) {
                        // Another node coordinates the id now, and ends the transaction
                        // from its records.
                        continue;
                    }
                    Some(r.0.lock(&id))
                }
                _ => None,
            };
            let _held = lock.as_ref().map(|l| l.lock());
            // A failure queues it again.
            let _ = self.execute_end(&id, &plan);
        }
        Ok(())
    }

    /// Whether some partition here is a replica of a cluster's topic.
    pub(crate) fn has_replicas(&self) -> bool {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        topics
            .iter()
            .any(|t| t.partitions.read().iter().any(|p| p.is_replica()))
    }

    /// Aborts the transactions open longer than their timeout; the coordinator bumps their
    /// epochs, fencing the producers. One that cannot end now is retried (its record says
    /// PrepareAbort already), and the others go on.
    pub(super) fn expire_transactions(&self, now: i64) -> Result<()> {
        let expired = self.inner.txns.lock().expired(now);
        let replication = self.inner.txn_log.read().clone();
        for (id, replicated) in expired {
            let lock = replication
                .as_ref()
                .filter(|_| replicated)
                .map(|r| r.0.lock(&id));
            let _held = lock.as_ref().map(|l| l.lock());
            // Again under the lock: an import may have changed the record meanwhile.
            let Some(plan) = self.inner.txns.lock().expire_one(&id, now) else {
                continue;
            };
            tracing::warn!(transactional_id = %id, "Aborting a transaction that passed its timeout.");
            // A failure queues it again.
            let _ = self.execute_end(&id, &plan);
        }
        Ok(())
    }

    fn txn_error(&self, id: &str, e: TxnError) -> LogError {
        match e {
            TxnError::Fenced { epoch, current, .. } => {
                let pid = self.inner.txns.lock().get(id).map_or(-1, |r| r.producer_id);
                LogError::ProducerFenced {
                    producer_id: pid,
                    epoch,
                    current_epoch: current,
                }
            }
            other => LogError::InvalidTxnState {
                transactional_id: id.into(),
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn txn_init(
        &self,
        id: &str,
        timeout: Duration,
        replicated: bool,
    ) -> Result<(i64, i16)> {
        self.check_open()?;
        let timeout = timeout.min(self.inner.options.max_transaction_timeout);
        let needs_pid =
            |coord: &crate::txn::TxnCoordinator| coord.get(id).is_none_or(|r| r.epoch == i16::MAX);
        // Taken before the coordinator's lock: in a cluster a new block of ids is a round
        // trip to the controller, and that lock is on the produce path and the
        // replication layer's (an id taken and then not needed is simply never used).
        let mut pid = None;
        if needs_pid(&self.inner.txns.lock()) {
            pid = Some(self.allocate_producer_id()?);
        }
        let result = {
            let mut coord = self.inner.txns.lock();
            if pid.is_none() && needs_pid(&coord) {
                // Another init of the id ran meanwhile (not through one client's requests).
                pid = Some(self.allocate_producer_id()?);
            }
            let r = coord.init(id, timeout.as_millis() as u64, || pid.unwrap_or(-1));
            r.map(|(mut rec, mut abort)| {
                if replicated && !rec.replicated {
                    rec.replicated = true;
                    coord.load(rec.clone());
                    if let Some(plan) = abort.as_mut() {
                        plan.prepare.replicated = true;
                    }
                }
                (rec, abort)
            })
        };
        let (rec, abort) = result.map_err(|e| self.txn_error(id, e))?;
        if let Some(plan) = abort {
            // The transaction of the instance this one fences is aborted first, as an end
            // of its own (PrepareAbort, markers, CompleteAbort): until that is done the new
            // instance is told to retry (CONCURRENT_TRANSACTIONS), as Kafka's coordinator
            // answers, and the id's record says what is left to do wherever it is read.
            self.inner.txns.lock().load(plan.prepare.clone());
            self.execute_end(id, &plan)?;
            let mut coord = self.inner.txns.lock();
            let aborted = coord.get(id).is_some_and(|r| {
                r.status == TxnStatus::CompleteAbort
                    && r.producer_id == plan.prepare.producer_id
                    && r.epoch == plan.prepare.epoch
            });
            if !aborted {
                return Err(LogError::InvalidTxnState {
                    transactional_id: id.into(),
                    reason: "the fenced instance's transaction is still completing; retry".into(),
                });
            }
            coord.load(rec.clone());
        }
        self.write_txn_record(&rec)?;
        Ok((rec.producer_id, rec.epoch))
    }

    pub(crate) fn txn_add_partitions(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        parts: &[(String, u32)],
    ) -> Result<()> {
        let rec = self
            .inner
            .txns
            .lock()
            .add_partitions(now_ms(), id, pid, epoch, parts);
        match rec.map_err(|e| self.txn_error(id, e))? {
            Some(rec) => self.write_txn_record(&rec),
            None => Ok(()),
        }
    }

    pub(crate) fn txn_add_offsets(
        &self,
        pid: i64,
        group: &str,
        offsets: &[(TopicPartition, CommittedOffset)],
    ) {
        let mut store = self.inner.offsets.lock();
        for (tp, v) in offsets {
            store.add_pending(pid, group, tp.clone(), v.clone());
        }
    }

    pub(crate) fn txn_end(&self, id: &str, pid: i64, epoch: i16, commit: bool) -> Result<()> {
        let plan = self.inner.txns.lock().end(id, pid, epoch, commit);
        match plan.map_err(|e| self.txn_error(id, e))? {
            Some(plan) => self.execute_end(id, &plan),
            None => Ok(()),
        }
    }

    /// A producer id and epoch for a network client (Kafka's `InitProducerId`): a fresh id
    /// at epoch 0 for an idempotent producer, or, with a transactional id, the id's
    /// producer with its epoch bumped, which fences older instances and aborts (or
    /// completes) what they left open. `timeout` is the transaction timeout, capped by
    /// [`LogOptions::max_transaction_timeout`](crate::LogOptions::max_transaction_timeout).
    pub fn init_producer_id(
        &self,
        transactional_id: Option<&str>,
        timeout: Duration,
    ) -> Result<(i64, i16)> {
        self.check_open()?;
        match transactional_id {
            // In a cluster, a Kafka client's transactional id is replicated: its
            // coordinator moves with the leadership of the id's partition.
            Some(id) => self.txn_init(id, timeout, self.inner.txn_log.read().is_some()),
            None => Ok((self.allocate_producer_id()?, 0)),
        }
    }

    /// Kafka's AddPartitionsToTxn: adds partitions to the transaction of `id` (opening it),
    /// which must be at `producer_id` and `epoch`. Unknown partitions are refused.
    pub fn add_partitions_to_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TxnPartition],
    ) -> Result<()> {
        self.check_open()?;
        let markers = self.inner.remote_markers.read().clone();
        for (topic, partition) in partitions {
            // In a cluster this node may hold no copy: the cluster's word is enough.
            if markers
                .as_ref()
                .is_some_and(|m| m.0.exists(topic, *partition))
            {
                continue;
            }
            self.partition(topic, *partition)?;
        }
        self.txn_add_partitions(id, producer_id, epoch, partitions)
    }

    /// Kafka's AddOffsetsToTxn: adds the `__consumer_offsets` partition of `group` to the
    /// transaction, so that a [`Log::txn_offset_commit`] can follow.
    pub fn add_offsets_to_txn(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<()> {
        self.check_open()?;
        let tp = (OFFSETS_TOPIC.to_string(), self.offsets_partition(group));
        self.txn_add_partitions(id, producer_id, epoch, std::slice::from_ref(&tp))
    }

    /// Kafka's TxnOffsetCommit: a group's offsets as part of the open transaction of `id`
    /// (after [`Log::add_offsets_to_txn`]), visible when it commits and dropped if it aborts.
    /// With `member` (member id, generation) the member must be current in its classic group
    /// (KIP-447: a zombie's offsets are refused).
    pub fn txn_offset_commit(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        member: Option<(&str, i32)>,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        self.check_open()?;
        let partition = self.offsets_partition(group);
        let tp = (OFFSETS_TOPIC.to_string(), partition);
        if let Some((member, generation)) = member {
            self.validate_classic_member(group, generation, member)?;
        }
        // The coordinator stays locked from the check to the pending offsets: a transaction
        // end (EndTxn, expiry) between them would leave a batch after its marker and offsets
        // pending under a finished transaction.
        let txns = self.inner.txns.lock();
        // A transaction another node coordinates (a cluster) was checked there: the group's
        // coordinator takes its offsets, and that node ends them (settle_offsets).
        let clustered = self.inner.remote_markers.read().is_some();
        let elsewhere = clustered && !txns.knows_producer(producer_id);
        // Coordinated here in a cluster, the transaction holds the group's partition of the
        // cluster's offsets topic (AddOffsetsToTxn), not this node's `__consumer_offsets`:
        // it must be open at this epoch.
        let open_here = clustered && txns.is_open(producer_id, epoch);
        if !elsewhere && !open_here && !txns.includes(producer_id, epoch, &tp) {
            return Err(LogError::InvalidTxnState {
                transactional_id: id.into(),
                reason: format!(
                    "group '{group}' was not added to the open transaction (AddOffsetsToTxn first)"
                ),
            });
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let (values, records) = Self::offset_commit(group, offsets);
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id,
            producer_epoch: epoch,
            transactional: true,
            ..BatchOptions::default()
        });
        let err = |source| LogError::Batch {
            topic: OFFSETS_TOPIC.into(),
            partition,
            source,
        };
        for r in &records {
            b.push(r).map_err(err)?;
        }
        self.append(OFFSETS_TOPIC, partition, b.build().map_err(err)?)?;
        self.txn_add_offsets(producer_id, group, &values);
        drop(txns);
        Ok(())
    }

    /// Appends a client's transactional batch (Kafka's Produce) if, and only if, the
    /// partition is in the producer's open transaction, with the coordinator locked across
    /// the check and the append: a transaction ending meanwhile would otherwise see the
    /// batch land after its marker, opening a transaction nobody will end.
    /// Whether this node's transaction coordinator coordinates `producer_id` (in a cluster
    /// another node's may: its batches are then taken as Kafka's brokers take them).
    pub fn coordinates_producer(&self, producer_id: i64) -> bool {
        self.inner.txns.lock().knows_producer(producer_id)
    }

    pub fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        batch: Vec<u8>,
    ) -> Result<AppendInfo> {
        let txns = self.inner.txns.lock();
        if !txns.includes(producer_id, epoch, &(topic.to_string(), partition)) {
            return Err(LogError::InvalidTxnState {
                transactional_id: format!("(producer {producer_id})"),
                reason: format!(
                    "{topic}-{partition} is not in the open transaction (AddPartitionsToTxn first)"
                ),
            });
        }
        let info = self.append(topic, partition, batch);
        drop(txns);
        info
    }

    /// Kafka's EndTxn: commits or aborts the open transaction of `id` (markers on every
    /// partition, offsets materialized on commit).
    pub fn end_txn(&self, id: &str, producer_id: i64, epoch: i16, commit: bool) -> Result<()> {
        self.check_open()?;
        self.txn_end(id, producer_id, epoch, commit)
    }

    /// Whether a transactional write of `producer_id` at `epoch` to `partition` of `topic`
    /// belongs to its open transaction (Kafka's produce-side verification).
    pub fn txn_includes(&self, producer_id: i64, epoch: i16, topic: &str, partition: u32) -> bool {
        self.inner
            .txns
            .lock()
            .includes(producer_id, epoch, &(topic.to_string(), partition))
    }

    /// Transactional ids and their state.
    pub fn transactions(&self) -> Vec<TxnRecord> {
        self.inner.txns.lock().list()
    }
}

//! [`Owner`]: what a task of a pipeline placed by a cluster asks of the cluster — the
//! topics it makes, the topics it may write, its transactional ids and where it keeps its
//! input positions — so the crates that run tasks (SQL queries, state stores) stay unaware
//! of the cluster.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;

/// The pipeline a task belongs to, in a cluster that places pipelines on nodes.
///
/// A pipeline's writes go where it runs: every topic it writes is made through the cluster
/// and led by the pipeline's node (it moves with it), and its transactional ids are
/// coordinated by that node, so that the node it moves to fences what it left behind.
/// Implementations block (they may wait for the cluster's controller).
pub trait Owner: Send + Sync {
    /// The pipeline's name.
    fn pipeline(&self) -> &str;

    /// Makes topic `name` for the pipeline unless the pipeline made it already (then it is
    /// left as it is). Refuses a topic someone else made ([`crate::LogError::NotOwner`]);
    /// fails retryably while the cluster cannot make it or does not lead it here yet.
    fn create_topic(&self, name: &str, partitions: u32, config: &[(String, String)]) -> Result<()>;

    /// Whether the pipeline may write topic `name`: it does not exist, or the pipeline made
    /// it ([`crate::LogError::NotOwner`] otherwise).
    fn check_writes(&self, name: &str) -> Result<()>;

    /// The transactional id to use for a task whose id alone would be `base`: one the
    /// pipeline's node coordinates.
    fn transactional_id(&self, base: &str) -> Result<String>;

    /// The pipeline's positions topic (one partition), where its tasks keep their input
    /// positions inside their transactions, so that they move with the pipeline.
    fn positions_topic(&self) -> &str;
}

/// A shared [`Owner`], compared by pipeline name (a redeploy makes a new one for the same
/// pipeline, which is not a change of settings).
#[derive(Clone)]
pub struct OwnerRef(pub Arc<dyn Owner>);

impl std::ops::Deref for OwnerRef {
    type Target = dyn Owner;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for OwnerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Owner").field(&self.0.pipeline()).finish()
    }
}

impl PartialEq for OwnerRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.pipeline() == other.0.pipeline()
    }
}

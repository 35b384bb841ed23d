//! What a task promises after a crash, and the producer that keeps the promise.

use sluice_log::{Log, Producer, ProducerConfig};

/// What a task promises after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Outputs, state changes and input positions commit in one log transaction per epoch:
    /// after a crash nothing is lost and nothing is repeated.
    #[default]
    ExactlyOnce,
    /// Outputs are written (idempotently, but outside transactions), then positions are
    /// committed: after a crash the work of the unfinished epoch is done again, so outputs
    /// may repeat; nothing is lost.
    AtLeastOnce,
}

impl Guarantee {
    /// The producer a task writes through: transactional (as `transactional_id`, fencing an
    /// earlier instance and aborting what it left open) for exactly-once, idempotent for
    /// at-least-once.
    pub fn producer(self, log: &Log, transactional_id: &str) -> sluice_log::Result<Producer> {
        self.producer_in(log, transactional_id, false)
    }

    /// [`Self::producer`]; with `replicated`, a transactional id the cluster coordinates
    /// ([`ProducerConfig::replicated`]): the task runs on the node that leads the id's
    /// partition, and the node that leads it next fences this instance.
    pub fn producer_in(
        self,
        log: &Log,
        transactional_id: &str,
        replicated: bool,
    ) -> sluice_log::Result<Producer> {
        match self {
            Guarantee::ExactlyOnce => log.transactional_producer(
                transactional_id,
                ProducerConfig {
                    replicated,
                    ..ProducerConfig::default()
                },
            ),
            Guarantee::AtLeastOnce => log.producer(ProducerConfig::default()),
        }
    }
}

impl std::fmt::Display for Guarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
        })
    }
}

//! DROP STREAM/TABLE and TERMINATE: removing sources, and persistent queries with their
//! state.

use super::{Engine, Output, capitalized};
use crate::ast::SourceKind;
use crate::error::{Result, SqlError};

impl Engine {
    /// DROP STREAM/TABLE [DELETE TOPIC].
    pub(super) fn drop_source(
        &mut self,
        kind: SourceKind,
        name: &str,
        if_exists: bool,
        delete_topic: bool,
    ) -> Result<Output> {
        let dropped = self
            .catalog
            .drop_source(kind, name, if_exists, delete_topic)?;
        Ok(Output::Message(if dropped {
            format!(
                "{} {name} dropped{}.",
                capitalized(kind),
                if delete_topic { " with its topic" } else { "" }
            )
        } else {
            format!("{} {name} does not exist.", capitalized(kind))
        }))
    }

    /// TERMINATE a persistent query (or all of them): stop it, forget it, drop its state.
    pub(super) fn terminate(&mut self, query_id: Option<String>) -> Result<Output> {
        let ids: Vec<String> = match query_id {
            None => self.catalog.queries().map(|q| q.id.clone()).collect(),
            Some(id) => vec![
                self.catalog
                    .queries()
                    .find(|q| q.id.eq_ignore_ascii_case(&id))
                    .map(|q| q.id.clone())
                    .ok_or(SqlError::Unknown {
                        kind: "query",
                        name: id,
                    })?,
            ],
        };
        for id in &ids {
            self.queries.stop(id);
            self.queries.clear_failed(id);
            self.catalog.remove_query(id)?;
            self.drop_query_state(id)?;
            self.forget_positions(id)?;
        }
        Ok(Output::Message(match ids.len() {
            0 => "No queries to terminate.".to_string(),
            _ => format!("Terminated {}.", ids.join(", ")),
        }))
    }

    /// Moves a terminated query's committed input positions back to the start: a query
    /// created later may get the same id (ids count from the highest one left), and it
    /// must read its input from the beginning as a new query does, not resume where the
    /// old one stopped (its state is gone with it).
    fn forget_positions(&mut self, id: &str) -> Result<()> {
        let group = crate::runner::query_group(id);
        let Some(info) = self.log.describe_group(&group) else {
            return Ok(());
        };
        let topics: std::collections::BTreeSet<String> =
            info.partitions.into_iter().map(|p| p.tp.topic).collect();
        for topic in topics {
            match self
                .log
                .reset_offsets(&group, &topic, sluice_log::ResetTo::Earliest, true)
            {
                // A deleted input topic has no position to keep.
                Ok(_) | Err(sluice_log::LogError::UnknownTopic(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes a terminated query's stores and their changelog topics: the aggregate's, the
    /// table input's (`-source`) and each join's, by their exact names (a prefix could take
    /// another query's).
    fn drop_query_state(&mut self, id: &str) -> Result<()> {
        let name = id.to_lowercase();
        let mut stores = vec![name.clone(), format!("{name}-source")];
        for k in 0..crate::operators::join::plan::MAX_JOINS {
            for part in crate::operators::join::STORE_PARTS {
                stores.push(format!("{name}-join{k}-{part}"));
            }
        }
        for store in stores {
            let changelog = format!("{store}-changelog");
            if let Ok(t) = self.log.topic(&changelog) {
                for p in 0..t.partition_count() {
                    let _ = self
                        .queries
                        .env()
                        .destroy(&sluice_state::StoreId::new(&store, p));
                }
                // In a cluster the changelog is the cluster's, with copies on other nodes
                // (this node's alone cannot go): it stays, as do the kept positions.
                if !self.placed {
                    self.log.delete_topic(&changelog)?;
                }
            }
        }
        Ok(())
    }
}

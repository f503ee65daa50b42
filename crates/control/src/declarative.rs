//! Backup, restore and declarative state: the routing state as plain records (the seed file
//! format), at the current or a past revision, and the plan that takes it to a desired one.

use routing_core::state::plan::{self, PlanStep, Section};
use routing_core::{Mutation, Revision, RoutingState, StateDump};

use crate::{Actor, Error, ErrorKind, Node};

/// Largest desired state accepted, as JSON (a change holding it must fit the store's log).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;

/// A plan, and what applying it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePlan {
    /// The revision the plan was made on.
    pub base_revision: Revision,
    /// What differs, record by record (empty: the state already is the desired one).
    pub steps: Vec<PlanStep>,
    /// The revision of the change that applied it (`None`: a dry run, or nothing to do).
    pub applied: Option<Revision>,
}

impl Node {
    /// The routing state at `revision` (the current one when `None`) as plain records: a
    /// consistent copy at one revision, for a backup, a seed file, or to see what a tenant was
    /// routed to when an incident began.
    pub async fn export_state(&self, revision: Option<Revision>) -> Result<StateDump, Error> {
        let current = self.state();
        match revision {
            None => Ok(current.dump()),
            Some(revision) if revision == current.revision() => Ok(current.dump()),
            Some(revision) => Ok(self.store().state_at(revision).await?.dump()),
        }
    }

    /// Plans the change from the current state to `desired`, for the `sections` it manages
    /// (others are kept; records of tenants and services that go, go with them), and unless
    /// `dry_run` applies it as one audited change, refused with [`ErrorKind::Conflict`]
    /// (`ABORTED`) when the state is no longer at `expected_revision` (by default the revision
    /// it was planned on).
    pub async fn apply_state(
        &self,
        desired: &StateDump,
        sections: &[Section],
        dry_run: bool,
        expected_revision: Option<Revision>,
        actor: &Actor,
    ) -> Result<StatePlan, Error> {
        if sections.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "invalid sections: name at least one (tenants, services, instances, pins, overrides, rollouts, experiments)",
            ));
        }
        let current = self.state().dump();
        if let Some(expected) = expected_revision
            && expected > current.revision
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid expected_revision: {expected} is ahead of the state (at revision {})",
                    current.revision
                ),
            ));
        }
        let merged = plan::desired_state(&current, desired, sections);
        // Every record is checked before anything is planned.
        RoutingState::from_dump(&merged)?;
        let steps = plan::plan(&current, &merged);
        let base_revision = current.revision;
        if dry_run || steps.is_empty() {
            if let Some(expected) = expected_revision
                && expected != base_revision
            {
                return Err(routing_core::RoutingError::StateMoved {
                    expected,
                    current: base_revision,
                }
                .into());
            }
            return Ok(StatePlan {
                base_revision,
                steps,
                applied: None,
            });
        }
        let mutation = Mutation::ReplaceState {
            state: Box::new(merged),
            expected_revision: Some(expected_revision.unwrap_or(base_revision)),
        };
        let commit = self.commit(mutation, actor).await?;
        Ok(StatePlan {
            base_revision,
            steps,
            applied: Some(commit.revision),
        })
    }
}

//! The history of a tenant's schema, as read from its `grey_schema_history` table, and what is
//! applied according to it.

use std::collections::BTreeMap;

/// The name of the history table, created in each tenant's schema.
pub const HISTORY_TABLE: &str = "grey_schema_history";

/// One row of the history table: an attempt to apply or revert a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The migration's number.
    pub version: u32,
    /// The migration's name.
    pub name: String,
    /// The migration's checksum when it ran (or after a repair).
    pub checksum: String,
    /// `up` or `down`.
    pub direction: String,
    /// When it ran, in milliseconds since the Unix epoch.
    pub applied_at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// Whether it completed; a failed attempt was rolled back (PostgreSQL) or stopped at a
    /// statement (MySQL, see `statements_done`).
    pub success: bool,
    /// Who ran it ([`MigratorOptions::applied_by`](crate::MigratorOptions::applied_by)).
    pub applied_by: String,
    /// What the database said when it failed; none for a success, and for an attempt that
    /// is still running or was interrupted (the process died) on an engine that records
    /// progress per statement.
    pub error: Option<String>,
    /// On engines whose DDL is not transactional (MySQL, MariaDB): how many of the
    /// migration's statements are applied, counting those of the attempt it resumed. `None`
    /// on PostgreSQL, where a step is all or nothing.
    pub statements_done: Option<u32>,
    /// Whether an operator repaired this half-applied attempt, so that the next run of the
    /// same migration in the same direction resumes after its `statements_done`.
    pub repaired: bool,
}

impl AppliedMigration {
    /// Returns whether this attempt left its migration half-applied: it failed, or was
    /// interrupted, after some of its statements were committed (or with none known to be).
    pub fn is_half_applied(&self) -> bool {
        !self.success
            && self
                .statements_done
                .is_some_and(|done| done > 0 || self.error.is_none())
    }
}

/// The state of one service's schema for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSchema {
    /// The service.
    pub service: String,
    /// The highest migration successfully applied and not rolled back since (0 for none).
    pub current: u32,
    /// Every attempt, oldest first.
    pub history: Vec<AppliedMigration>,
}

impl TenantSchema {
    /// Returns the schema state of a service from its history rows (oldest first).
    pub fn from_history(service: &str, history: Vec<AppliedMigration>) -> TenantSchema {
        let current = applied(&history).keys().next_back().copied().unwrap_or(0);
        TenantSchema {
            service: service.to_owned(),
            current,
            history,
        }
    }

    /// Returns the migrations in effect: version → the successful `up` row that applied them.
    pub fn applied(&self) -> BTreeMap<u32, &AppliedMigration> {
        applied(&self.history)
    }

    /// Returns the last attempt when it left its migration half-applied (see
    /// [`AppliedMigration::is_half_applied`]): nothing else runs until it is repaired, and
    /// once repaired only that migration, in that direction, resuming where it stopped.
    pub fn half_applied(&self) -> Option<&AppliedMigration> {
        self.history.last().filter(|row| row.is_half_applied())
    }

    /// Returns what an operator should do about this tenant's schema, if anything: a
    /// half-applied migration waiting for a repair, or waiting to be resumed.
    pub fn advice(&self, tenant_id: &str) -> Option<String> {
        let row = self.half_applied()?;
        let done = row.statements_done.unwrap_or(0);
        let what = match &row.error {
            Some(error) => format!("statement {} failed: {error}", done + 1),
            None => format!(
                "the attempt was interrupted during statement {} (it may or may not have run)",
                done + 1
            ),
        };
        let label = format!("{:04}_{}", row.version, row.name);
        Some(if row.repaired {
            format!(
                "migration {label} ({}) is repaired: the next run going {} resumes at statement {}",
                row.direction,
                row.direction,
                done + 1
            )
        } else {
            format!(
                "migration {label} is half-applied going {}: {done} statement(s) applied, {what}. \
                 Fix the cause in the database (or finish or undo that statement by hand), then \
                 run `greyrouter schema repair {tenant_id} --service {}`; the next upgrade \
                 resumes at statement {}",
                row.direction,
                self.service,
                done + 1
            )
        })
    }
}

/// Replays the history: a successful `up` applies a version, a successful `down` reverts it,
/// failed attempts change nothing.
fn applied(history: &[AppliedMigration]) -> BTreeMap<u32, &AppliedMigration> {
    let mut applied = BTreeMap::new();
    for row in history.iter().filter(|row| row.success) {
        if row.direction == "down" {
            applied.remove(&row.version);
        } else {
            applied.insert(row.version, row);
        }
    }
    applied
}

#[cfg(test)]
pub(crate) fn row(
    version: u32,
    direction: &str,
    success: bool,
    checksum: &str,
) -> AppliedMigration {
    AppliedMigration {
        version,
        name: format!("m{version}"),
        checksum: checksum.to_owned(),
        direction: direction.to_owned(),
        applied_at_ms: 0,
        duration_ms: 0,
        success,
        applied_by: "test".to_owned(),
        error: (!success).then(|| "boom".to_owned()),
        statements_done: None,
        repaired: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_replays_ups_downs_and_ignores_failures() {
        let schema = |rows| TenantSchema::from_history("s", rows).current;
        assert_eq!(schema(vec![]), 0);
        assert_eq!(
            schema(vec![row(1, "up", true, "a"), row(2, "up", true, "b")]),
            2
        );
        assert_eq!(
            schema(vec![row(1, "up", true, "a"), row(2, "up", false, "b")]),
            1
        );
        assert_eq!(
            schema(vec![
                row(1, "up", true, "a"),
                row(2, "up", true, "b"),
                row(2, "down", true, "b"),
            ]),
            1
        );
        assert_eq!(
            schema(vec![
                row(1, "up", true, "a"),
                row(2, "up", true, "b"),
                row(2, "down", false, "b"),
            ]),
            2
        );
        assert_eq!(
            schema(vec![
                row(1, "up", true, "a"),
                row(1, "down", true, "a"),
                row(1, "up", true, "a"),
            ]),
            1
        );
    }

    #[test]
    fn a_failure_after_committed_statements_is_half_applied_until_it_succeeds() {
        let partial = |done, error: Option<&str>, repaired| AppliedMigration {
            statements_done: Some(done),
            error: error.map(str::to_owned),
            repaired,
            ..row(2, "up", false, "b")
        };
        // PostgreSQL rolls a failed step back: never half-applied.
        let rolled_back = TenantSchema::from_history("s", vec![row(2, "up", false, "b")]);
        assert_eq!(rolled_back.half_applied(), None);
        assert_eq!(rolled_back.advice("acme"), None);
        // The first statement failed: nothing applied, a rerun starts over.
        let first = TenantSchema::from_history("s", vec![partial(0, Some("boom"), false)]);
        assert_eq!(first.half_applied(), None);
        // One statement committed, the second failed.
        let stuck = TenantSchema::from_history(
            "s",
            vec![row(1, "up", true, "a"), partial(1, Some("boom"), false)],
        );
        assert_eq!(stuck.current, 1);
        assert!(stuck.half_applied().is_some());
        let advice = stuck.advice("acme").expect("advice");
        assert!(advice.contains("statement 2 failed: boom"), "{advice}");
        assert!(
            advice.contains("greyrouter schema repair acme --service s"),
            "{advice}"
        );
        // Interrupted before anything was recorded as done: unknown, so half-applied too.
        let interrupted = TenantSchema::from_history("s", vec![partial(0, None, false)]);
        assert!(interrupted.half_applied().is_some());
        assert!(
            interrupted
                .advice("acme")
                .expect("advice")
                .contains("interrupted during statement 1")
        );
        // Repaired: still the last word until a run resumes it; a later success ends it.
        let repaired = TenantSchema::from_history("s", vec![partial(1, Some("boom"), true)]);
        assert!(
            repaired
                .advice("acme")
                .expect("advice")
                .contains("resumes at statement 2")
        );
        let resumed = TenantSchema::from_history(
            "s",
            vec![partial(1, Some("boom"), true), row(2, "up", true, "b")],
        );
        assert_eq!(resumed.half_applied(), None);
        assert_eq!(resumed.current, 2);
    }
}

//! Plans: which migrations take a tenant's schema from where it is to a target, and which moves
//! are refused. Pure: computed from the catalog and the history.

use crate::{Migration, SchemaError, ServiceCatalog, TenantSchema};

/// Which way a step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Applies a migration's up SQL.
    Up,
    /// Applies a migration's down SQL.
    Down,
}

impl Direction {
    /// Returns `up` or `down`, as the history table records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// One migration to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// The migration's number.
    pub version: u32,
    /// The migration's name.
    pub name: String,
    /// Up or down.
    pub direction: Direction,
    /// Statements already applied by a repaired, half-applied attempt of this step (engines
    /// without transactional DDL), which the step skips; 0 runs it whole.
    pub skip_statements: u32,
}

/// What migrating a tenant's schema to a target would do (a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tenant.
    pub tenant_id: String,
    /// The service.
    pub service: String,
    /// The schema version now.
    pub from: u32,
    /// The target schema version.
    pub to: u32,
    /// The steps, in the order they would run; empty when there is nothing to do.
    pub steps: Vec<PlannedStep>,
}

/// Returns the steps from the schema's state to `target`, or why it must not be migrated.
///
/// Refuses a target the catalog does not have (0, no migration at all, is always a target), an
/// applied migration the catalog does not have or whose checksum changed (`Edited`), a
/// migration numbered below the current version but never applied (renumber it above), and,
/// going down, a migration that is a contract (`Contract`) or has no down SQL (`Irreversible`).
pub(crate) fn steps(
    catalog: &ServiceCatalog,
    schema: &TenantSchema,
    target: u32,
) -> Result<Vec<PlannedStep>, SchemaError> {
    let unknown = |version| SchemaError::UnknownSchemaVersion {
        service: catalog.service.clone(),
        version,
    };
    if target != 0 && catalog.migration(target).is_none() {
        return Err(unknown(target));
    }
    let applied = schema.applied();
    for (version, row) in &applied {
        let migration = catalog
            .migration(*version)
            .ok_or_else(|| unknown(*version))?;
        if migration.checksum != row.checksum {
            return Err(SchemaError::Edited {
                version: migration.version,
                name: migration.name.clone(),
            });
        }
    }
    // From the history, not `schema.current`: the rows are what the database says.
    let current = applied.keys().next_back().copied().unwrap_or(0);
    if let Some(skipped) = catalog
        .migrations
        .iter()
        .find(|migration| migration.version < current && !applied.contains_key(&migration.version))
    {
        return Err(SchemaError::Catalog(format!(
            "migration {} is numbered below the schema's current version {current} of service \
             {} but was never applied; give it a number above {}",
            skipped.label(),
            catalog.service,
            catalog.latest().max(current),
        )));
    }

    let step = |migration: &Migration, direction| PlannedStep {
        version: migration.version,
        name: migration.name.clone(),
        direction,
        skip_statements: 0,
    };
    let mut steps = if target >= current {
        catalog
            .migrations
            .iter()
            .filter(|migration| migration.version > current && migration.version <= target)
            .map(|migration| step(migration, Direction::Up))
            .collect()
    } else {
        down_steps(catalog, &applied, target)?
    };
    if let Some(half) = schema.half_applied() {
        let refused = || SchemaError::HalfApplied {
            version: half.version,
            name: half.name.clone(),
            direction: half.direction.clone(),
            statement: half.statements_done.unwrap_or(0) + 1,
            repaired: half.repaired,
        };
        // Unrepaired: nothing runs. Repaired: only a plan that goes through it resumes it.
        let first = steps.first_mut().ok_or_else(refused)?;
        if !half.repaired
            || first.version != half.version
            || first.direction.as_str() != half.direction
        {
            return Err(refused());
        }
        // Statement numbers mean nothing once the text changed (a repair acknowledges it).
        if catalog
            .migration(half.version)
            .is_some_and(|migration| migration.checksum != half.checksum)
        {
            return Err(SchemaError::Edited {
                version: half.version,
                name: half.name.clone(),
            });
        }
        first.skip_statements = half.statements_done.unwrap_or(0);
    }
    Ok(steps)
}

/// Returns the down steps from the applied migrations to `target`, refusing contract and
/// irreversible ones.
fn down_steps(
    catalog: &ServiceCatalog,
    applied: &std::collections::BTreeMap<u32, &crate::AppliedMigration>,
    target: u32,
) -> Result<Vec<PlannedStep>, SchemaError> {
    let unknown = |version| SchemaError::UnknownSchemaVersion {
        service: catalog.service.clone(),
        version,
    };
    let step = |migration: &Migration, direction| PlannedStep {
        version: migration.version,
        name: migration.name.clone(),
        direction,
        skip_statements: 0,
    };
    let mut steps = Vec::new();
    for version in applied.keys().rev().filter(|version| **version > target) {
        let migration = catalog
            .migration(*version)
            .ok_or_else(|| unknown(*version))?;
        if migration.contract {
            return Err(SchemaError::Contract {
                version: migration.version,
                name: migration.name.clone(),
            });
        }
        if migration.down.is_none() {
            return Err(SchemaError::Irreversible {
                version: migration.version,
                name: migration.name.clone(),
            });
        }
        steps.push(step(migration, Direction::Down));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::history::row;

    /// Migrations 1, 2 (reversible), 4 (irreversible), 6 (contract), 7 (reversible).
    fn catalog() -> ServiceCatalog {
        let migrations = vec![
            Migration::new(1, "m1", "CREATE TABLE a (id int);", Some("DROP TABLE a;")),
            Migration::new(2, "m2", "CREATE TABLE b (id int);", Some("DROP TABLE b;")),
            Migration::new(4, "m4", "CREATE TABLE c (id int);", None),
            Migration::new(6, "m6", "-- greyrouter: contract\nDROP TABLE c;", None),
            Migration::new(7, "m7", "CREATE TABLE d (id int);", Some("DROP TABLE d;")),
        ];
        ServiceCatalog {
            service: "svc".to_owned(),
            migrations,
            versions: BTreeMap::new(),
        }
    }

    fn applied_through(catalog: &ServiceCatalog, last: u32) -> TenantSchema {
        let rows = catalog
            .migrations
            .iter()
            .filter(|m| m.version <= last)
            .map(|m| row(m.version, "up", true, &m.checksum))
            .collect();
        TenantSchema::from_history("svc", rows)
    }

    fn versions(steps: &[PlannedStep]) -> Vec<(u32, Direction)> {
        steps.iter().map(|s| (s.version, s.direction)).collect()
    }

    #[test]
    fn up_through_every_pending_migration() {
        let catalog = catalog();
        let fresh = applied_through(&catalog, 0);
        let plan = steps(&catalog, &fresh, 4).expect("plan");
        assert_eq!(
            versions(&plan),
            vec![(1, Direction::Up), (2, Direction::Up), (4, Direction::Up)]
        );
        assert_eq!(plan[0].name, "m1");
        let at_two = applied_through(&catalog, 2);
        assert_eq!(
            versions(&steps(&catalog, &at_two, 7).expect("plan")),
            vec![(4, Direction::Up), (6, Direction::Up), (7, Direction::Up)]
        );
        assert_eq!(steps(&catalog, &at_two, 2).expect("plan"), vec![]);
        assert_eq!(steps(&catalog, &fresh, 0).expect("plan"), vec![]);
    }

    #[test]
    fn down_in_reverse_to_the_target() {
        let catalog = catalog();
        let at_two = applied_through(&catalog, 2);
        assert_eq!(
            versions(&steps(&catalog, &at_two, 0).expect("plan")),
            vec![(2, Direction::Down), (1, Direction::Down)]
        );
        assert_eq!(
            versions(&steps(&catalog, &at_two, 1).expect("plan")),
            vec![(2, Direction::Down)]
        );
        let at_seven = applied_through(&catalog, 7);
        assert_eq!(
            versions(&steps(&catalog, &at_seven, 6).expect("plan")),
            vec![(7, Direction::Down)]
        );
    }

    #[test]
    fn refuses_to_go_below_a_contract_or_irreversible_migration() {
        let catalog = catalog();
        let at_seven = applied_through(&catalog, 7);
        assert_eq!(
            steps(&catalog, &at_seven, 4),
            Err(SchemaError::Contract {
                version: 6,
                name: "m6".to_owned()
            })
        );
        let at_four = applied_through(&catalog, 4);
        let err = steps(&catalog, &at_four, 2).expect_err("irreversible");
        assert_eq!(
            err,
            SchemaError::Irreversible {
                version: 4,
                name: "m4".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot go below 0004_m4: it has no down migration"
        );
        assert_eq!(
            SchemaError::Contract {
                version: 4,
                name: "drop_legacy_columns".to_owned()
            }
            .to_string(),
            "cannot go below 0004_drop_legacy_columns: it is a contract (destructive) migration"
        );
    }

    #[test]
    fn refuses_unknown_targets_and_unknown_applied_versions() {
        let catalog = catalog();
        let fresh = applied_through(&catalog, 0);
        for target in [3, 5, 8] {
            assert_eq!(
                steps(&catalog, &fresh, target),
                Err(SchemaError::UnknownSchemaVersion {
                    service: "svc".to_owned(),
                    version: target
                })
            );
        }
        let ahead = TenantSchema::from_history("svc", vec![row(9, "up", true, "x")]);
        assert_eq!(
            steps(&catalog, &ahead, 9),
            Err(SchemaError::UnknownSchemaVersion {
                service: "svc".to_owned(),
                version: 9
            })
        );
    }

    #[test]
    fn detects_edited_migrations() {
        let catalog = catalog();
        let mut schema = applied_through(&catalog, 2);
        schema.history[0].checksum = "0".repeat(64);
        let err = steps(&catalog, &schema, 4).expect_err("edited");
        assert_eq!(
            err,
            SchemaError::Edited {
                version: 1,
                name: "m1".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "migration 0001_m1 was edited after it was applied; repair it explicitly"
        );
        // A rolled-back migration is not checked: it will be applied again as it is now.
        let mut schema = applied_through(&catalog, 2);
        schema.history.push(row(2, "down", true, "old"));
        schema.history[1].checksum = "old".to_owned();
        assert_eq!(
            versions(&steps(&catalog, &schema, 2).expect("plan")),
            vec![(2, Direction::Up)]
        );
    }

    #[test]
    fn failed_attempts_are_retried() {
        let catalog = catalog();
        let mut schema = applied_through(&catalog, 1);
        schema
            .history
            .push(row(2, "up", false, &catalog.migrations[1].checksum));
        let schema = TenantSchema::from_history("svc", schema.history);
        assert_eq!(schema.current, 1);
        assert_eq!(
            versions(&steps(&catalog, &schema, 2).expect("plan")),
            vec![(2, Direction::Up)]
        );
    }

    #[test]
    fn refuses_a_migration_numbered_below_the_current_version() {
        let catalog = catalog();
        let rows = [1, 4]
            .iter()
            .map(|v| {
                let m = catalog.migration(*v).expect("known");
                row(m.version, "up", true, &m.checksum)
            })
            .collect();
        let schema = TenantSchema::from_history("svc", rows);
        let err = steps(&catalog, &schema, 7).expect_err("out of order");
        assert!(err.to_string().contains("0002_m2"), "{err}");
    }

    #[test]
    fn a_half_applied_migration_blocks_every_plan_until_repaired_then_resumes() {
        let catalog = catalog();
        let checksum = |version| catalog.migration(version).expect("known").checksum.clone();
        let half = |version, direction: &str, done, repaired| crate::AppliedMigration {
            statements_done: Some(done),
            repaired,
            ..row(version, direction, false, &checksum(version))
        };
        let mut rows = vec![row(1, "up", true, &checksum(1)), half(2, "up", 1, false)];
        let stuck = TenantSchema::from_history("svc", rows.clone());
        for target in [0, 1, 2, 7] {
            let err = steps(&catalog, &stuck, target).expect_err("refused");
            assert!(
                matches!(
                    err,
                    SchemaError::HalfApplied {
                        version: 2,
                        statement: 2,
                        repaired: false,
                        ..
                    }
                ),
                "{target}: {err}"
            );
        }
        rows[1].repaired = true;
        let repaired = TenantSchema::from_history("svc", rows.clone());
        let plan = steps(&catalog, &repaired, 4).expect("resumes");
        assert_eq!(
            versions(&plan),
            vec![(2, Direction::Up), (4, Direction::Up)]
        );
        assert_eq!(plan[0].skip_statements, 1);
        assert_eq!(plan[1].skip_statements, 0);
        // A plan that does not go through it is still refused.
        assert!(matches!(
            steps(&catalog, &repaired, 0),
            Err(SchemaError::HalfApplied { repaired: true, .. })
        ));
        // Edited since: statement numbers mean nothing.
        rows[1].checksum = "other".to_owned();
        assert!(matches!(
            steps(&catalog, &TenantSchema::from_history("svc", rows), 2),
            Err(SchemaError::Edited { version: 2, .. })
        ));
        // A half-applied down resumes going down.
        let down = TenantSchema::from_history(
            "svc",
            vec![
                row(1, "up", true, &checksum(1)),
                row(2, "up", true, &checksum(2)),
                half(2, "down", 1, true),
            ],
        );
        let plan = steps(&catalog, &down, 0).expect("resumes down");
        assert_eq!(
            versions(&plan),
            vec![(2, Direction::Down), (1, Direction::Down)]
        );
        assert_eq!(plan[0].skip_statements, 1);
    }
}

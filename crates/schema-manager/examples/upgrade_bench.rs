//! Times upgrading many tenant schemas with `migrate_many` at several concurrency levels, on the
//! machine's PostgreSQL (127.0.0.1:5432, user postgres, trust authentication) or its MySQL /
//! MariaDB (127.0.0.1:3306, root, empty password).
//!
//! ```sh
//! cargo run --release -p greyrouter-schema-manager --example upgrade_bench -- \
//!     [--engine postgres|mysql] [--tenants 200] [--runs 3] [--concurrency 1,5,10]
//! ```
//!
//! Each run uses fresh databases, one schema per tenant (on MySQL a schema is a database),
//! already at schema version 1 (untimed), and times the upgrade of every tenant to version 2:
//! one migration of three statements (create a table, create an index, add a column), each
//! tenant under its lock, with its history row (PostgreSQL: in one transaction; MySQL: updated
//! after each statement). Then it times a rerun, which finds nothing to do. Figures are
//! wall-clock times: the median of the runs, with the minimum and maximum.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greyrouter_test_support::{MysqlDatabases, PostgresDatabase};
use routing_core::Tenant;
use schema_manager::{Catalog, Migrator, MigratorOptions, StepProgress, Templates};

const SERVICE: &str = "bench-service";

struct Settings {
    mysql: bool,
    tenants: usize,
    runs: usize,
    concurrency: Vec<usize>,
}

fn settings() -> Result<Settings, Box<dyn Error>> {
    let mut settings = Settings {
        mysql: false,
        tenants: 200,
        runs: 3,
        concurrency: vec![1, 5, 10],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--engine" => {
                settings.mysql = match value.as_str() {
                    "postgres" => false,
                    "mysql" => true,
                    other => return Err(format!("unknown engine {other}").into()),
                }
            }
            "--tenants" => settings.tenants = value.parse()?,
            "--runs" => settings.runs = value.parse::<usize>()?.max(1),
            "--concurrency" => {
                settings.concurrency =
                    value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(settings)
}

fn catalog(mysql: bool) -> Result<Arc<Catalog>, Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let service = dir.path().join(SERVICE);
    std::fs::create_dir_all(&service)?;
    std::fs::write(
        service.join("0001_create_accounts.up.sql"),
        if mysql {
            "CREATE TABLE accounts (id BIGINT AUTO_INCREMENT PRIMARY KEY, email TEXT NOT NULL);\n"
        } else {
            "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text NOT NULL);\n"
        },
    )?;
    std::fs::write(
        service.join("0002_add_invoices.up.sql"),
        if mysql {
            "CREATE TABLE invoices (id BIGINT AUTO_INCREMENT PRIMARY KEY, account_id BIGINT NOT \
             NULL REFERENCES accounts (id), amount_cents BIGINT NOT NULL, issued_at TIMESTAMP \
             NOT NULL DEFAULT CURRENT_TIMESTAMP);\n\
             CREATE INDEX invoices_account_id ON invoices (account_id, issued_at);\n\
             ALTER TABLE accounts ADD COLUMN billing_email TEXT;\n"
        } else {
            "CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint NOT NULL \
             REFERENCES accounts, amount_cents bigint NOT NULL, issued_at timestamptz NOT NULL \
             DEFAULT now());\n\
             CREATE INDEX invoices_account_id ON invoices (account_id, issued_at);\n\
             ALTER TABLE accounts ADD COLUMN billing_email text;\n"
        },
    )?;
    std::fs::write(
        service.join("versions.toml"),
        "[versions]\n\"v1\" = 1\n\"v2\" = 2\n",
    )?;
    Ok(Arc::new(Catalog::load(dir.path())?))
}

fn tenant(index: usize) -> Tenant {
    Tenant {
        id: format!("tenant-{index:04}"),
        name: String::new(),
        region: String::new(),
        tier: String::new(),
        labels: Default::default(),
        active: true,
    }
}

/// Migrates every tenant to `target` and returns how long it took; fails on any tenant error.
async fn migrate_all(
    migrator: &Migrator,
    tenants: &[Tenant],
    target: u32,
) -> Result<Duration, Box<dyn Error>> {
    let ignore: Arc<dyn Fn(StepProgress) + Send + Sync> = Arc::new(|_| {});
    let started = Instant::now();
    let outcomes = migrator
        .migrate_many(tenants.to_vec(), SERVICE, target, ignore)
        .await;
    let elapsed = started.elapsed();
    for (tenant_id, outcome) in outcomes {
        let schema = outcome.map_err(|err| format!("tenant {tenant_id}: {err}"))?;
        if schema.current != target {
            return Err(format!("tenant {tenant_id} is at {}", schema.current).into());
        }
    }
    Ok(elapsed)
}

fn summary(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let settings = settings()?;
    let catalog = catalog(settings.mysql)?;
    let tenants: Vec<Tenant> = (0..settings.tenants).map(tenant).collect();
    println!(
        "upgrade of {} tenant schemas on {} (one schema each, one server) by a 3-statement \
         migration; {} run(s) per level, median [min-max]",
        settings.tenants,
        if settings.mysql {
            "MySQL"
        } else {
            "PostgreSQL"
        },
        settings.runs
    );
    println!(
        "{:>11} | {:>22} | {:>10} | {:>14} | {:>22}",
        "concurrency", "upgrade ms", "tenants/s", "ms per tenant", "no-op rerun ms"
    );
    for &concurrency in &settings.concurrency {
        let mut upgrades = Vec::new();
        let mut reruns = Vec::new();
        for _ in 0..settings.runs {
            // Dropped at the end of the run, with every tenant's schema.
            let (_postgres, _mysql, templates) = if settings.mysql {
                let dbs = MysqlDatabases::create();
                let templates = Templates {
                    url: dbs.url(),
                    schema: format!("{}_t_{{tenant}}", dbs.prefix()),
                };
                (None, Some(dbs), templates)
            } else {
                let db = PostgresDatabase::create();
                let templates = Templates {
                    url: db.url(),
                    schema: "t_{tenant}".to_owned(),
                };
                (Some(db), None, templates)
            };
            let migrator = Migrator::new(
                catalog.clone(),
                Arc::new(templates.clone()),
                MigratorOptions {
                    max_concurrent: concurrency,
                    applied_by: "upgrade_bench".to_owned(),
                    ..MigratorOptions::default()
                },
            );
            // Untimed: every tenant's schema, history table and version 1.
            let setup = Migrator::new(
                catalog.clone(),
                Arc::new(templates),
                MigratorOptions {
                    max_concurrent: 10,
                    ..MigratorOptions::default()
                },
            );
            migrate_all(&setup, &tenants, 1).await?;
            upgrades.push(migrate_all(&migrator, &tenants, 2).await?);
            reruns.push(migrate_all(&migrator, &tenants, 2).await?);
        }
        let (median, min, max) = summary(upgrades);
        let (rerun, rerun_min, rerun_max) = summary(reruns);
        println!(
            "{concurrency:>11} | {:>8.0} [{:>5.0}-{:>5.0}] | {:>10.0} | {:>14.2} | {:>8.0} [{:>5.0}-{:>5.0}]",
            ms(median),
            ms(min),
            ms(max),
            settings.tenants as f64 / median.as_secs_f64(),
            ms(median) / settings.tenants as f64,
            ms(rerun),
            ms(rerun_min),
            ms(rerun_max),
        );
    }
    Ok(())
}

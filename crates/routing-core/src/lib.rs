//! The greyrouter domain and every routing decision, as plain data and pure functions.
//!
//! No I/O, no async, no clock: time and randomness are inputs, so every rule is tested without
//! servers or sleeps. (One helper makes randomness for callers: [`hash::entropy`], a per-thread
//! generator; no rule calls it.) Every other crate depends on this one, never the reverse.
//!
//! Layout:
//! - [`model`]: tenants, services, versions, instances, rollouts, experiments, overrides;
//! - [`hash`]: the stable tenant hash and its 10,000 buckets;
//! - [`balance`]: load balancing among a version's instances ([`Pool`]);
//! - [`state`]: the persistent [`RoutingState`], [`Mutation`]s and version resolution;
//! - [`watch`]: effective assignments and their differences, for watchers;
//! - [`validate`]: name syntax and fixed limits;
//! - [`limits`]: token buckets for rate limits, in a table of bounded size;
//! - [`outcome`]: request outcome statistics ([`Stats`]) over a sliding time [`Window`];
//! - [`ejection`]: circuit breaking and outlier ejection of one instance ([`InstanceHealth`]);
//! - [`analysis`]: canary analysis ([`judge`]) and rollout progression ([`next_step`]).
//!
//! Invariants:
//! - resolution order is emergency override > tenant pin > experiment variant > rollout >
//!   the service's default version, and every answer carries its [`Source`];
//! - raising a rollout's share never moves a tenant already on its version back;
//! - an unhealthy or drained instance is never picked while an eligible one exists;
//! - applying a mutation either yields the next revision or an error and no change.

pub mod analysis;
pub mod balance;
pub mod ejection;
mod error;
pub mod hash;
pub mod limits;
pub mod model;
pub mod outcome;
pub mod state;
pub mod utc;
pub mod validate;
pub mod watch;

pub use analysis::{AnalysisPolicy, Measurement, StepAction, Verdict, judge, next_step};
pub use balance::{IN_FLIGHT_TIMEOUT_MS, InstanceLoad, Member, Members, PickRequest, Pool};
pub use ejection::{Ejection, EjectionBook, EjectionPolicy, InstanceHealth, may_eject};
pub use error::{Entity, RoutingError};
pub use model::{
    Cohort, Experiment, Instance, Override, Resolution, Revision, Rollout, Service, Source,
    Strategy, Tenant, Variant,
};
pub use outcome::{LATENCY_BOUNDS_MS, Stats, Window, WindowConfig};
pub use state::{
    Mutation, Outcome, Pin, RouteDecision, RouteQuery, RoutingState, Scope, StateDump, StateLoader,
    TenantEntry,
};

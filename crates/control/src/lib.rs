//! The greyrouter node: everything a router does, with no transport.
//!
//! A [`Node`] holds this process's copy of the routing state ([`replica`]), commits changes to
//! the store with their audit record ([`audit`]), keeps outcome windows and ejects outliers
//! ([`outcomes`]), drives rollouts ([`rollouts`]), runs per-tenant schema upgrades and gates
//! version switches on them ([`schema`]), and streams assignment changes to watchers
//! ([`watch`]). Every admin operation is an async method on [`Node`] taking and returning domain
//! types; front doors (gRPC, HTTP) only convert their messages, call the node and map its
//! [`Error`] through the one table in [`error`].
//!
//! Layout:
//! - [`node`]: [`Node`], its settings, routing decisions and the admin operations;
//! - [`error`]: [`Error`] and [`ErrorKind`], the one table of gRPC codes and HTTP statuses;
//! - [`replica`], [`audit`], [`outcomes`], [`rollouts`], [`schema`], [`watch`];
//! - [`discovery`]: what each discovery source (crate `nacos-sync`) last did;
//! - [`declarative`]: backup, restore, past states, and plans to a desired state;
//! - [`telemetry`]: what the node tells a metrics recorder;
//! - [`access`]: roles, tenant scopes, the rule of every operation, rate limits and caps.

pub mod access;
pub mod audit;
pub mod declarative;
pub mod discovery;
pub mod error;
pub mod node;
pub mod outcomes;
pub mod replica;
pub mod rollouts;
pub mod schema;
pub mod telemetry;
pub mod watch;

pub use audit::Actor;
pub use error::{Error, ErrorKind};
pub use node::{Node, NodeSettings};

//! Service discovery for greyrouter: instances come from the registry that already knows them.
//!
//! - [`registry`]: the `Registry` port ([`Registry::fetch`] lists the instances of some
//!   services), and how registry fields map to greyrouter's ([`FieldMapping`]);
//! - [`nacos`]: Nacos through its v1 Open API, polled; [`etcd`]: etcd v3 through its JSON
//!   gateway, polled; [`mod@file`]: a TOML/JSON file re-read when
//!   it changes;
//! - [`reconcile`]: the pure step from a registry's view and the routing state to changes, with
//!   the protection threshold;
//! - [`syncer`]: the loop that holds the source's lease, reads, reconciles and commits through
//!   the node as `discovery:<source>`;
//! - [`tenants`]: tenants from the tenant service's paged HTTP API, and their reconcile step;
//! - [`settings`]: the `[discovery]` configuration and building the registries it names;
//! - `suite` (feature `test-suite`): the behaviour every adapter passes.

pub mod etcd;
pub mod file;
pub mod nacos;
pub mod reconcile;
pub mod registry;
pub mod settings;
#[cfg(feature = "test-suite")]
pub mod suite;
pub mod syncer;
pub mod tenants;

pub use registry::{DiscoveredInstance, FieldMapping, Registry, RegistryError, RegistryView};
pub use settings::{DiscoverySettings, SourceSettings};

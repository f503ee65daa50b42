//! The greyrouter server: gRPC `Router` and `Admin` services over a [`Store`], and the
//! `greyrouter` command line (server and admin client in one binary).
//!
//! Layout:
//! - [`config`]: the typed configuration, layered file → environment → flags;
//! - [`replica`]: this router's copy of the routing state, following the store;
//! - [`router`], [`admin`]: the tonic services;
//! - [`outcomes`]: outcome windows, outlier ejection; [`rollouts`]: the rollout driver;
//! - [`audit`]: who changed what, when and why; [`schema`]: per-tenant schema migrations;
//! - [`convert`]: proto ↔ domain conversions; [`status`]: the error → status table;
//! - [`server`]: wiring and serving; [`cli`]: the command line.
//!
//! [`Store`]: greyrouter_store::Store

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod convert;
pub mod log;
pub mod outcomes;
pub mod replica;
pub mod rollouts;
pub mod router;
pub mod schema;
pub mod server;
pub mod status;

//! The `greyrouter.v1` gRPC contract: message types, client and server stubs generated from
//! `proto/greyrouter/v1/*.proto`, and the encoded file descriptor set for server reflection.
//!
//! With the `domain` feature, [`domain`] converts between the messages and routing-core's types,
//! in one place for every crate that speaks the contract.

pub mod codec;
#[cfg(feature = "domain")]
pub mod domain;
mod encoded;

pub use encoded::{
    Encoded, EncodedRouteBatch, EncodedUpdate, FrameTooLarge, GRPC_PREFIX_LEN, GrpcFrame,
    RouteAnswer, RouteBatchWriter,
};

/// Messages and services of package `greyrouter.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    // Comments of the .proto files become docs verbatim: `<id>` reads as an HTML tag.
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls
)]
pub mod v1 {
    tonic::include_proto!("greyrouter.v1");
}

/// The server stubs of package `greyrouter.v1` with `WatchAssignments` streaming
/// [`EncodedUpdate`]s (a message encoded once is sent to every watcher it is for) and
/// `RouteBatch` answering an [`EncodedRouteBatch`] (written from borrowed names). The wire
/// format is that of [`v1`]; every other message is [`v1`]'s.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls
)]
pub mod shared {
    include!(concat!(env!("OUT_DIR"), "/shared/greyrouter.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every greyrouter proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/greyrouter_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_both_services() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let services: Vec<String> = set
            .file
            .iter()
            .filter(|file| file.package() == "greyrouter.v1")
            .flat_map(|file| file.service.iter().map(|s| s.name().to_owned()))
            .collect();
        assert!(services.contains(&"Router".to_owned()), "{services:?}");
        assert!(services.contains(&"Admin".to_owned()), "{services:?}");
    }
}

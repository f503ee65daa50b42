//! Compiles `proto/greyrouter/v1/*.proto` with protox (no system `protoc`) and writes the
//! file descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("greyrouter/v1");
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    // tonic-prost-build does not announce the inputs it reads from a descriptor set.
    println!("cargo:rerun-if-changed={}", dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("greyrouter_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Requests that do not decode answer INVALID_ARGUMENT (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors.clone())?;
    // The same services for servers that send an `AssignmentUpdate` encoded once for many
    // watchers and a `RouteBatchResponse` written as it is decided: every message is the one
    // above, except those two (see src/encoded.rs).
    let shared = out_dir.join("shared");
    fs::create_dir_all(&shared)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&shared)
        .extern_path(".greyrouter.v1", "crate::v1")
        .extern_path(".greyrouter.v1.AssignmentUpdate", "crate::EncodedUpdate")
        .extern_path(
            ".greyrouter.v1.RouteBatchResponse",
            "crate::EncodedRouteBatch",
        )
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}

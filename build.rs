use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs no system protobuf compiler.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads env here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Ordered maps: labels print and compare deterministically.
    tonic_prost_build::configure()
        .btree_map(".")
        .file_descriptor_set_path(out.join("pgpipe_descriptor.bin"))
        .compile_protos(&["proto/pgpipe/v1/pgpipe.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

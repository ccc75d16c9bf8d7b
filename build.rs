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

    // The messages once more, for the CLI's `--json` only, with pbjson's
    // serde impls (the proto3 JSON mapping) and a Timestamp of the CLI's
    // (prost-types' has no serde). The API keeps prost-types; the CLI
    // re-decodes a message's bytes into its twin here to print it.
    let json_out = out.join("json");
    std::fs::create_dir_all(&json_out)?;
    let descriptors = json_out.join("descriptor.bin");
    prost_build::Config::new()
        .btree_map(["."])
        .extern_path(".google.protobuf.Timestamp", "crate::cli::json::Timestamp")
        .out_dir(&json_out)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&["proto/pgpipe/v1/pgpipe.proto"], &["proto"])?;
    // Every field, defaults included (as `grpcurl -emit-defaults` prints),
    // so scripts find each key on every line.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .out_dir(&json_out)
        .extern_path(".google.protobuf.Timestamp", "crate::cli::json::Timestamp")
        .btree_map(["."])
        .emit_fields()
        .build(&[".pgpipe"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

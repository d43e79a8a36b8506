//! Compiles the vendored protos (proto/, see proto/README.md) into Rust with
//! protox, a pure-Rust protobuf compiler, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "envoy/service/discovery/v3/ads.proto",
            "security/v1alpha1/ca.proto",
        ],
        ["proto"],
    )?;
    // The upstream comments hold YAML and URLs in indented blocks that
    // rustdoc would compile as doctests; the vendored .proto files are the
    // documentation. (The builder's own disable_comments does not reach the
    // message code in compile_fds: only a Config does.)
    let mut config = tonic_prost_build::Config::new();
    config.disable_comments(["."]);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("protos.rs")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}

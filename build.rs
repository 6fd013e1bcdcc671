//! Compiles `proto/ps.proto` for the parameter server. `protox` parses the file in Rust, so
//! building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ps.proto");
    let fds = protox::compile(["proto/ps.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".lambdaml.ps.v1")
        .compile_fds(fds)?;
    Ok(())
}

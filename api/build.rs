fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/palisade/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    // Map fields as BTreeMap: the operator compares encoded configurations to decide whether a
    // node's configuration changed, and HashMap order would make every compile look new.
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}

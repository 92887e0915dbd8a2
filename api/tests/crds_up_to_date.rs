//! Fails when `crds/` differs from what the Rust types generate.
use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let rendered = palisade_api::crdgen::render_all().expect("render CRDs");
    assert!(!rendered.is_empty());
    for (name, yaml) in rendered {
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            committed == yaml,
            "crds/{name} is out of date: run `cargo run -p palisade-api --bin crdgen -- crds` and commit the result"
        );
    }
}

#[test]
fn the_crd_reference_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/crd-reference.md");
    let rendered = palisade_api::crdgen::render_reference().expect("render the reference");
    assert!(rendered.contains("| `spec.workloadSelector` |"), "{rendered}");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/crd-reference.md is out of date: run `cargo run -p palisade-api --bin crdgen -- crds docs` and commit the result"
    );
}

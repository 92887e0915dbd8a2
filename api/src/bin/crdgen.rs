//! Writes Palisade's CRDs as YAML into the directory given as the first argument (default `crds`)
//! and, when a second argument names a directory, the CRD reference `crd-reference.md` there.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in palisade_api::crdgen::render_all()? {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    if let Some(docs) = std::env::args().nth(2) {
        let path = PathBuf::from(docs).join("crd-reference.md");
        std::fs::write(&path, palisade_api::crdgen::render_reference()?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

//! Argo CD's health checks for Palisade's kinds (config/samples/argocd/argocd-cm.yaml), run the
//! way Argo CD runs them, against objects from a real API server.

use anyhow::{ensure, Context, Result};

use crate::workspace_root;

/// The Argo CD health script for `kind` from config/samples/argocd/argocd-cm.yaml.
pub fn health_script(kind: &str) -> Result<String> {
    let path = workspace_root().join("config/samples/argocd/argocd-cm.yaml");
    let cm: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let key = format!("resource.customizations.health.palisade.dev_{kind}");
    cm["data"][key.as_str()]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {key} in {}", path.display()))
}

/// Evaluates an Argo CD health script the way Argo CD does: `obj` is a global holding the
/// object (JSON null as nil), the chunk returns `hs` with `status` and `message`.
pub fn argocd_health(kind: &str, obj: &serde_json::Value) -> Result<(String, String)> {
    use mlua::LuaSerdeExt;
    let lua = mlua::Lua::new();
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua
        .to_value_with(obj, options)
        .map_err(|e| anyhow::anyhow!("converting the object to Lua: {e}"))?;
    lua.globals()
        .set("obj", value)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hs: mlua::Table = lua
        .load(health_script(kind)?)
        .set_name(format!("{kind} health"))
        .eval()
        .map_err(|e| anyhow::anyhow!("running the {kind} health script: {e}"))?;
    let status: String = hs.get("status").map_err(|e| anyhow::anyhow!("hs.status: {e}"))?;
    let message: String = hs
        .get("message")
        .map_err(|e| anyhow::anyhow!("hs.message: {e}"))?;
    Ok((status, message))
}

pub fn assert_health(kind: &str, obj: &serde_json::Value, want: &str) -> Result<String> {
    let (status, message) = argocd_health(kind, obj)?;
    println!("{kind} {}: {status} ({message})", obj["metadata"]["name"]);
    ensure!(
        status == want,
        "{kind} health is {status} ({message}), expected {want}, for:\n{}",
        serde_json::to_string_pretty(obj)?
    );
    Ok(message)
}

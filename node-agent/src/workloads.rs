//! Finds a pod's cgroup v2 directory on this node from its UID, in the layouts the kubelet uses
//! (cgroupfs driver: `kubepods/<qos>/pod<uid>`; systemd driver:
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice`).

use std::path::{Path, PathBuf};

/// How deep below the cgroup root a pod directory is searched for when no known layout matches
/// (nested node images such as kind add levels).
const MAX_SEARCH_DEPTH: usize = 5;

fn pod_dir_names(uid: &str) -> [String; 2] {
    [format!("pod{uid}"), format!("pod{}.slice", uid.replace('-', "_"))]
}

fn is_pod_dir(name: &str, uid: &str) -> bool {
    let [cgroupfs, systemd] = pod_dir_names(uid);
    name == cgroupfs || name.ends_with(&format!("-{systemd}"))
}

/// The pod's cgroup directory, or an error saying where it was looked for.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Result<PathBuf, String> {
    if uid.is_empty() || uid.contains('/') || uid.contains("..") {
        return Err(format!("invalid pod UID {uid:?}"));
    }
    let underscored = uid.replace('-', "_");
    let known = [
        root.join("kubepods").join(format!("pod{uid}")),
        root.join("kubepods/besteffort").join(format!("pod{uid}")),
        root.join("kubepods/burstable").join(format!("pod{uid}")),
        root.join("kubepods.slice")
            .join(format!("kubepods-pod{underscored}.slice")),
        root.join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!("kubepods-besteffort-pod{underscored}.slice")),
        root.join("kubepods.slice/kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{underscored}.slice")),
    ];
    if let Some(found) = known.iter().find(|p| p.is_dir()) {
        return Ok(found.clone());
    }
    search(root, uid, 0).ok_or_else(|| {
        format!(
            "no cgroup directory for pod UID {uid} under {} (looked for kubepods/<qos>/pod<uid> and kubepods.slice layouts)",
            root.display()
        )
    })
}

fn search(dir: &Path, uid: &str, depth: usize) -> Option<PathBuf> {
    if depth >= MAX_SEARCH_DEPTH {
        return None;
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = vec![];
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_pod_dir(&name, uid) {
            return Some(entry.path());
        }
        // Only descend into directories that can hold pods.
        if name.starts_with("kubepods") || name.contains("kubelet") || depth == 0 && name.ends_with(".slice")
        {
            subdirs.push(entry.path());
        }
    }
    subdirs.into_iter().find_map(|d| search(&d, uid, depth + 1))
}

/// The cgroup id of a cgroup v2 directory (its inode number, as `bpf_skb_cgroup_id` and
/// `bpf_skb_ancestor_cgroup_id` report it).
pub fn cgroup_id(dir: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| format!("cannot read cgroup directory {}: {e}", dir.display()))
}

/// The pids in a cgroup and its descendants (up to 4 levels deep).
pub fn cgroup_tree_pids(dir: &Path) -> Vec<u32> {
    let mut pids = vec![];
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if depth + 1 < 4 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The cgroup ids (directory inodes) of every cgroup below `dir`, up to 4 levels deep.
pub fn descendant_cgroup_ids(dir: &Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = vec![];
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Ok(meta) = entry.metadata() {
                out.push(meta.ino());
            }
            if depth + 1 < 4 {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroupfs_and_systemd_layouts() {
        let root = std::env::temp_dir().join(format!("palisade-cg-test-{}", std::process::id()));
        let a = root.join("kubepods/besteffort/pod1111-22");
        let b = root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3333_44.slice");
        let c = root.join("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod5555_66.slice");
        for d in [&a, &b, &c] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        assert_eq!(find_pod_cgroup(&root, "1111-22").as_ref(), Ok(&a));
        assert_eq!(find_pod_cgroup(&root, "3333-44").as_ref(), Ok(&b));
        assert_eq!(find_pod_cgroup(&root, "5555-66").as_ref(), Ok(&c));
        let missing = find_pod_cgroup(&root, "7777").expect_err("absent pod");
        assert!(
            missing.contains("no cgroup directory for pod UID 7777"),
            "{missing}"
        );
        assert!(find_pod_cgroup(&root, "../etc").is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn lists_descendant_cgroups() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("palisade-cg-desc-{}", std::process::id()));
        let c1 = root.join("container-a");
        let c2 = root.join("container-b/nested");
        std::fs::create_dir_all(&c1).expect("mkdir");
        std::fs::create_dir_all(&c2).expect("mkdir");
        let ids = descendant_cgroup_ids(&root);
        for d in [&c1, &c2] {
            let ino = std::fs::metadata(d).expect("stat").ino();
            assert!(ids.contains(&ino), "{} missing", d.display());
        }
        assert_eq!(ids.len(), 3);
        let _ = std::fs::remove_dir_all(&root);
    }
}

//! Start-up clean-up of the state directory. A `kill -9` (or a power cut)
//! between staging a write and committing it leaves the staged copy behind:
//! a hidden version directory of a Secret, `tls.key` included, or a
//! temporary status or manifest file. Nothing reads them, but they would
//! stay forever; the owner of the directory removes them before it writes.

use std::fs;
use std::path::{Path, PathBuf};

/// How deep the state directory goes: `secrets/<namespace>/<name>/`.
const MAX_DEPTH: usize = 4;

/// Removes what interrupted writes left anywhere in `state_dir`, and
/// returns what was removed. Call it only while holding the directory's
/// lock, before the first write.
pub fn sweep(state_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    sweep_dir(state_dir, 0, &mut removed);
    removed
}

fn sweep_dir(dir: &Path, depth: usize, removed: &mut Vec<PathBuf>) {
    // Hidden `..` versions that `..data` does not point to (all of them in
    // a Secret whose first write never committed).
    removed.extend(lanyard_files::volume::sweep(dir));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if lanyard_files::is_staged(name) {
            let gone = if kind.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed.push(path);
            }
        } else if kind.is_dir() && !name.starts_with("..") && depth < MAX_DEPTH {
            sweep_dir(&path, depth + 1, removed);
        }
    }
}

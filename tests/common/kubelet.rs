//! A ConfigMap or Secret volume as the kubelet writes it (`AtomicWriter`): the files live in a
//! timestamped directory `..2026_11_23_10_00_00.N`, `..data` is a symlink to it, and each key
//! is a symlink `key -> ..data/key`. An update writes a new timestamped directory, points
//! `..data_tmp` at it, renames `..data_tmp` over `..data` (the one atomic step) and deletes the
//! old directory. The keys' own symlinks never change.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

pub struct ProjectedVolume {
    pub dir: PathBuf,
    generation: u32,
    current: Option<String>,
}

impl ProjectedVolume {
    /// A volume at `dir` (created) holding `files`.
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> ProjectedVolume {
        std::fs::create_dir_all(dir).unwrap();
        let mut volume = ProjectedVolume {
            dir: dir.to_owned(),
            generation: 0,
            current: None,
        };
        volume.update(files);
        for (key, _) in files {
            symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        volume
    }

    /// The path an app (or the agent) reads `key` at.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Replaces the contents, as the kubelet does after the object changed.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let name = format!("..2026_11_23_10_00_00.{}", self.generation);
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        for (key, content) in files {
            std::fs::write(data.join(key), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = self.current.replace(name) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

//! QEMU's vhost-user back-end description files (`VhostUserBackend`, spec "Backend program
//! conventions", checklist 6.4): `description`, `type`, `binary`, optional `tags`. With
//! `--backend-json FILE` the harness starts `binary --socket-path {socket}` per scenario.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// A back-end described by its JSON file.
#[derive(Clone, Debug, Deserialize)]
pub struct Description {
    /// Human-readable description.
    pub description: String,
    /// `VHostUserBackendType` (`block`, `net`, `fs`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute path of the program.
    pub binary: PathBuf,
    /// Debugging tags (ignored).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Why a description file cannot be used.
#[derive(Debug, Error)]
pub enum BackendJsonError {
    /// Unreadable.
    #[error("cannot read the back-end description {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error the system reported.
        #[source]
        source: std::io::Error,
    },
    /// Not a `VhostUserBackend` object.
    #[error("{path} is not a vhost-user back-end description (description, type, binary)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// `binary` is relative or missing.
    #[error("{path}: binary {binary} is not an absolute path to an existing program")]
    Binary {
        /// The file.
        path: PathBuf,
        /// The binary named.
        binary: PathBuf,
    },
}

/// Reads a description file.
pub fn load(path: &Path) -> Result<Description, BackendJsonError> {
    let text = std::fs::read_to_string(path).map_err(|source| BackendJsonError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let d: Description = serde_json::from_str(&text).map_err(|source| BackendJsonError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if !d.binary.is_absolute() || !d.binary.exists() {
        return Err(BackendJsonError::Binary {
            path: path.to_path_buf(),
            binary: d.binary,
        });
    }
    Ok(d)
}

impl Description {
    /// The `--spawn` command the convention implies.
    pub fn spawn_command(&self) -> String {
        let quoted = format!(
            "'{}'",
            self.binary.display().to_string().replace('\'', r"'\''")
        );
        format!("{quoted} --socket-path {{socket}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_gives_the_conventional_command_and_bad_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("50-blk.json");
        std::fs::write(
            &p,
            r#"{"description": "RAM disk", "type": "block", "binary": "/bin/true", "tags": ["x"]}"#,
        )
        .unwrap();
        let d = load(&p).unwrap();
        assert_eq!(d.kind, "block");
        assert_eq!(d.spawn_command(), "'/bin/true' --socket-path {socket}");
        std::fs::write(
            &p,
            r#"{"description": "x", "type": "block", "binary": "rel"}"#,
        )
        .unwrap();
        assert!(matches!(load(&p), Err(BackendJsonError::Binary { .. })));
        std::fs::write(&p, r#"{"type": "block"}"#).unwrap();
        assert!(matches!(load(&p), Err(BackendJsonError::Parse { .. })));
    }
}

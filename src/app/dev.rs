//! Dev mode's stored secret: a random 32-byte HS256 secret created once in the data directory (mode 0600) and
//! reused by later runs of `serve --dev` and by `shardcast token`, so a new user never handles a secret by hand.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::realtime::auth::Secret;

/// The secret's file name inside the data directory.
pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";

/// Shortest secret accepted from the file, bytes (the base64 text of 32 random bytes is 44).
pub const DEV_SECRET_BYTES_MIN: usize = 32;

/// Whether [`load_or_create`] made a new secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Made now.
    Created,
    /// Read from an earlier run.
    Reused,
}

/// The secret file of a data directory.
pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DEV_SECRET_FILE)
}

/// The stored secret of `data_dir`, if there is one. The secret is the file's text (base64), trimmed.
pub fn load(data_dir: &Path) -> io::Result<Option<Secret>> {
    let path = secret_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let t = text.trim();
            if t.len() < DEV_SECRET_BYTES_MIN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds {} bytes, fewer than {DEV_SECRET_BYTES_MIN}; delete it to get a new one",
                        path.display(),
                        t.len()
                    ),
                ));
            }
            Ok(Some(Secret::from(t)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// The stored secret of `data_dir`, created (with the directory) when absent: 32 bytes from the operating system's
/// random generator, base64, in a file only its owner may read (0600).
pub fn load_or_create(data_dir: &Path) -> io::Result<(Secret, SecretOrigin)> {
    if let Some(s) = load(data_dir)? {
        return Ok((s, SecretOrigin::Reused));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", data_dir.display()),
        )
    })?;
    let path = secret_path(data_dir);
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        // Another process created it between our read and our create: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return load(data_dir)?
                .map(|s| (s, SecretOrigin::Reused))
                .ok_or_else(|| io::Error::other(format!("{} vanished", path.display())));
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", path.display()),
            ));
        }
    };
    // The umask cannot widen 0600, but make sure nothing else did either.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    Ok((Secret::from(text), SecretOrigin::Created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = std::env::temp_dir().join(format!("shardcast-dev-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir).expect("load").is_none());
        let (a, o) = load_or_create(&dir).expect("create");
        assert_eq!(o, SecretOrigin::Created);
        assert_eq!(a.expose().len(), 44);
        let mode = std::fs::metadata(secret_path(&dir))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, o) = load_or_create(&dir).expect("reuse");
        assert_eq!(o, SecretOrigin::Reused);
        assert_eq!(a.expose(), b.expose());
        std::fs::write(secret_path(&dir), "short").expect("write");
        assert!(load_or_create(&dir).is_err(), "a short secret is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

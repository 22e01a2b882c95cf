//! The architecture invariants that are about imports, checked on the source tree (README.md, "Invariants").
//!
//! - Only `src/orm/backend/` names `mongodb`, `scylla` or `redb`.
//! - `proto/` is sans-IO: no runtime, no sockets, no files, no threads, no database.
//! - The transport-free parts of the realtime framework know nothing about the server, runtimes or databases.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `path` that are code (comments and doc comments removed), numbered from 1.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let code = match line.find("//") {
                Some(at) => &line[..at],
                None => line,
            };
            (!code.trim().is_empty()).then(|| (i + 1, code.to_string()))
        })
        .collect()
}

/// Every `file:line: code` under `dir` (minus `allowed`) whose code mentions one of `crates` as a path root.
fn offenders(dir: &str, allowed: &[&str], crates: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        if allowed.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        for (n, code) in code_lines(&file) {
            for krate in crates {
                let as_path = format!("{krate}::");
                let as_use = format!("use {krate}");
                if code.contains(&as_path) || code.trim_start().starts_with(&as_use) {
                    found.push(format!("{rel}:{n}: {}", code.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn only_the_orm_backends_import_database_drivers() {
    let found = offenders("src", &["src/orm/backend/"], &["mongodb", "scylla", "redb"]);
    assert!(
        found.is_empty(),
        "database drivers used outside src/orm/backend/:\n{}",
        found.join("\n")
    );
}

#[test]
fn proto_is_sans_io() {
    let found = offenders(
        "proto/src",
        &[],
        &[
            "glommio",
            "tokio",
            "std::net",
            "std::fs",
            "std::thread",
            "mongodb",
            "scylla",
            "redb",
            "tungstenite",
        ],
    );
    assert!(
        found.is_empty(),
        "proto/ must not do I/O:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_realtime_logic_knows_no_server_runtime_or_database() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for module in ["auth", "protocol", "rooms", "crud", "bus", "presence"] {
        let file = root.join(format!("src/realtime/{module}.rs"));
        for (n, code) in code_lines(&file) {
            for banned in [
                "crate::server",
                "crate::orm",
                "glommio::",
                "tokio::",
                "mongodb::",
                "scylla::",
                "redb::",
            ] {
                if code.contains(banned) {
                    found.push(format!("src/realtime/{module}.rs:{n}: {}", code.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "transport-free realtime modules import a layer below:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_see_an_offending_line() {
    // Guards the checker itself: a scan of the backends directory with no exemption must find the drivers.
    let found = offenders("src/orm/backend", &[], &["mongodb", "scylla", "redb"]);
    assert!(
        found.iter().any(|l| l.contains("mongodb::")),
        "checker missed mongodb imports: {found:?}"
    );
    assert!(
        found.iter().any(|l| l.contains("redb")),
        "checker missed redb imports: {found:?}"
    );
}

#[test]
fn only_the_cluster_connection_names_the_redis_crate_and_its_codec_is_sans_io() {
    let found = offenders("src", &["src/cluster/connection.rs"], &["redis"]);
    assert!(
        found.is_empty(),
        "the redis crate used outside src/cluster/connection.rs:\n{}",
        found.join("\n")
    );
    // Everything in src/cluster/ but the codec (codec.rs, msgpack.rs) may do I/O.
    let io_files = [
        "src/cluster/adapter.rs",
        "src/cluster/connection.rs",
        "src/cluster/node.rs",
        "src/cluster/config.rs",
        "src/cluster/mod.rs",
    ];
    let found = offenders(
        "src/cluster",
        &io_files,
        &[
            "glommio",
            "tokio",
            "std::net",
            "std::fs",
            "std::thread",
            "redis",
        ],
    );
    assert!(
        found.is_empty(),
        "the cluster codec must not do I/O:\n{}",
        found.join("\n")
    );
}

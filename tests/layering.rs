//! The architecture invariants that are about imports, checked on the source tree (README.md, "Invariants").
//!
//! - Only `src/orm/backend/` names `mongodb`, `scylla` or `redb`.
//! - `proto/` is sans-IO: no runtime, no sockets, no files, no threads, no database.
//! - The transport-free parts of the realtime framework know nothing about the server, runtimes or databases.
//! - `src/server/` is in layers that import only downwards (runtime < io < http < ws < engine < socketio < app),
//!   with no import circle.

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

// ---- src/server/ in layers that import only downwards ----

/// The layers of `src/server/`, bottom to top, and the modules (top-level files or directories) of each.
/// `config` is a leaf every layer may read and that reads no other module of the server.
const SERVER_LAYERS: &[(&str, &[&str])] = &[
    ("runtime", &["runtime"]),
    ("io", &["io"]),
    ("http", &["http"]),
    ("ws", &["ws"]),
    ("engine", &["engine"]),
    ("socketio", &["socketio"]),
    ("app", &["app", "conn", "memory", "conformance", "mod"]),
];
const SERVER_LEAF: &str = "config";
/// What the server's root (`src/server/mod.rs`, the re-exports) counts as: the top.
const SERVER_ROOT: &str = "mod";

fn server_layer(module: &str) -> Option<usize> {
    SERVER_LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn is_server_module(name: &str) -> bool {
    name == SERVER_LEAF || server_layer(name).is_some() && name != SERVER_ROOT
}

/// Where a file sits: `src/server/<name>.rs`, `src/server/mod.rs`, or `src/server/<dir>/<file>.rs`.
enum ServerFile {
    Top(String),
    Root,
    InDir { dir: String, is_mod: bool },
}

fn server_file(rel: &str) -> ServerFile {
    let inner = rel
        .strip_prefix("src/server/")
        .expect("a file of src/server");
    match inner.split_once('/') {
        Some((dir, file)) => ServerFile::InDir {
            dir: dir.to_owned(),
            is_mod: file == "mod.rs",
        },
        None if inner == "mod.rs" => ServerFile::Root,
        None => ServerFile::Top(inner.trim_end_matches(".rs").to_owned()),
    }
}

/// The server module a path of `rel` names: `crate::server::X`, `super::X`, `super::super::X` resolved from the
/// file's place (a sibling in the same directory is the same module, and is not reported). An item of the root
/// (`crate::server::Socket`) is the root.
fn resolve(rel: &str, prefix: &str, ident: &str) -> Option<String> {
    if let ("super::", ServerFile::InDir { dir, is_mod: false }) = (prefix, server_file(rel))
        && ident.starts_with(|c: char| c.is_ascii_lowercase())
    {
        // A sibling file of the same directory (or a function of its mod.rs: no such node, no edge).
        return Some(format!("{dir}/{ident}"));
    }
    let server_level = match (prefix, server_file(rel)) {
        ("crate::server::", _) => true,
        ("super::", ServerFile::Top(_)) => true,
        ("super::", ServerFile::InDir { is_mod, .. }) => is_mod,
        ("super::super::", ServerFile::InDir { is_mod, .. }) => !is_mod,
        _ => false,
    };
    if !server_level {
        return None;
    }
    if is_server_module(ident) {
        Some(ident.to_owned())
    } else if ident.starts_with(|c: char| c.is_ascii_uppercase()) {
        Some(SERVER_ROOT.to_owned())
    } else {
        None
    }
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Every (line, module) a file's code names, from its text (comments removed).
fn server_imports(rel: &str, code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let prefix = ["crate::server::", "super::super::", "super::"]
            .into_iter()
            .find(|p| boundary && code[i..].starts_with(p));
        let Some(prefix) = prefix else {
            i += 1;
            continue;
        };
        let line = code[..i].matches('\n').count() + 1;
        let rest = &code[i + prefix.len()..];
        let mut names = Vec::new();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = 0;
            for (at, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        names.push(ident_at(group[start..at].trim_start()));
                        start = at + 1;
                    }
                    _ => {}
                }
                if depth == 0 {
                    names.push(ident_at(group[start..at].trim_start()));
                    break;
                }
            }
        } else {
            names.push(ident_at(rest));
        }
        for name in names {
            if let Some(module) = resolve(rel, prefix, name) {
                found.push((line, module));
            }
        }
        i += prefix.len();
    }
    found
}

/// The module a file of `src/server/` belongs to (its layer's entry in [`SERVER_LAYERS`]).
fn server_module_of(rel: &str) -> String {
    match server_file(rel) {
        ServerFile::Top(name) => name,
        ServerFile::Root => SERVER_ROOT.to_owned(),
        ServerFile::InDir { dir, .. } => dir,
    }
}

/// The node of a file in the import graph: its module, or `dir/file` for a file of a directory other than mod.rs
/// (so that two files of one layer that import each other are a circle too).
fn server_node_of(rel: &str) -> String {
    match server_file(rel) {
        ServerFile::InDir { dir, is_mod: false } => {
            let file = rel.rsplit('/').next().unwrap_or_default();
            format!("{dir}/{}", file.trim_end_matches(".rs"))
        }
        _ => server_module_of(rel),
    }
}

/// The module (layer entry) of a graph node.
fn module_of_node(node: &str) -> &str {
    node.split('/').next().unwrap_or(node)
}

/// The layering violations of a set of files (`(path, code)`): imports up a layer, a `config` that imports, and
/// modules that import each other (directly or around a circle).
fn layering_violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    let mut edges: Vec<(String, String, String)> = Vec::new();
    let nodes: Vec<String> = files.iter().map(|(rel, _)| server_node_of(rel)).collect();
    for (rel, code) in files {
        let node = server_node_of(rel);
        let from = server_module_of(rel);
        for (line, target) in server_imports(rel, code) {
            let at = format!("{rel}:{line}");
            if target.contains('/') {
                // A sibling file: same layer; only circles matter.
                if target != node && nodes.contains(&target) {
                    edges.push((node.clone(), target, at));
                }
                continue;
            }
            let to = module_of_node(&target).to_owned();
            if to == from {
                continue;
            }
            if from == SERVER_LEAF {
                found.push(format!(
                    "{at}: `{SERVER_LEAF}` is a leaf but imports `{to}`"
                ));
            } else if to != SERVER_LEAF {
                let (Some(lf), Some(lt)) = (server_layer(&from), server_layer(&to)) else {
                    found.push(format!("{at}: `{from}` or `{to}` is in no layer"));
                    continue;
                };
                if lt > lf {
                    found.push(format!(
                        "{at}: `{from}` (layer {}) imports `{to}` (layer {}), a higher layer",
                        SERVER_LAYERS[lf].0, SERVER_LAYERS[lt].0
                    ));
                }
            }
            edges.push((node.clone(), to, at));
        }
    }
    // Circles: a depth-first walk of the module graph.
    let modules: std::collections::BTreeSet<&str> =
        edges.iter().map(|(a, _, _)| a.as_str()).collect();
    for start in &modules {
        let mut stack = vec![(start.to_string(), vec![start.to_string()])];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for (_, b, _) in edges.iter().filter(|(a, _, _)| *a == at) {
                if b == start {
                    let mut circle = path.clone();
                    circle.push(b.clone());
                    let text = format!("import circle: {}", circle.join(" -> "));
                    // Report each circle once, from its smallest module.
                    if path.iter().all(|m| m.as_str() >= *start) && !found.contains(&text) {
                        found.push(text);
                    }
                } else if seen.insert(b.clone()) {
                    let mut next = path.clone();
                    next.push(b.clone());
                    stack.push((b.clone(), next));
                }
            }
        }
    }
    found
}

fn server_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/server"), &mut files);
    files
        .into_iter()
        .map(|file| {
            let rel = file
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let code: Vec<String> = {
                let mut lines = Vec::new();
                let mut last = 0;
                for (n, code) in code_lines(&file) {
                    lines.extend(std::iter::repeat_n(String::new(), n - last - 1));
                    lines.push(code);
                    last = n;
                }
                lines
            };
            (rel, code.join("\n"))
        })
        .collect()
}

#[test]
fn the_server_imports_only_downwards_and_has_no_circle() {
    let files = server_sources();
    for (rel, _) in &files {
        let module = server_module_of(rel);
        assert!(
            module == SERVER_LEAF || server_layer(&module).is_some(),
            "{rel} belongs to no layer: add `{module}` to SERVER_LAYERS"
        );
    }
    let found = layering_violations(&files);
    assert!(
        found.is_empty(),
        "src/server/ layering (runtime < io < http < ws < engine < socketio < app) broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_layering_check_sees_an_offending_line() {
    let file = |rel: &str, code: &str| (rel.to_owned(), code.to_owned());
    let found = layering_violations(&[
        file("src/server/runtime/mod.rs", "use super::engine::Session;"),
        file(
            "src/server/engine/polling.rs",
            "use super::super::socketio::Socket;\nuse super::session::Session;",
        ),
        file("src/server/http.rs", "fn f(s: &crate::server::Socket) {}"),
        file(
            "src/server/ws.rs",
            "use super::{\n    config::ServerConfig,\n    engine::Session,\n};",
        ),
        file("src/server/config.rs", "use super::runtime::ShardCtx;"),
        file("src/server/conn.rs", "use super::memory::A;"),
        file("src/server/memory.rs", "use super::conn::B;"),
        file("src/server/socketio/socket.rs", "use super::connection::C;"),
        file("src/server/socketio/connection.rs", "use super::socket::D;"),
    ]);
    for expected in [
        "src/server/runtime/mod.rs:1: `runtime` (layer runtime) imports `engine`",
        "src/server/engine/polling.rs:1: `engine` (layer engine) imports `socketio`",
        "src/server/http.rs:1: `http` (layer http) imports `mod`",
        "src/server/ws.rs:1: `ws` (layer ws) imports `engine`",
        "src/server/config.rs:1: `config` is a leaf",
        "import circle: conn -> memory -> conn",
        "import circle: socketio/connection -> socketio/socket -> socketio/connection",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "missed {expected:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), 7, "{found:#?}");
    // Siblings in a directory and downward imports are fine.
    let clean = layering_violations(&[
        file("src/server/engine/session.rs", "use super::CloseReason;"),
        file(
            "src/server/socketio/socket.rs",
            "use super::super::engine::Session;\nuse super::super::runtime::ShardCtx;",
        ),
        file("src/server/conn.rs", "use crate::server::http::Request;"),
    ]);
    assert!(clean.is_empty(), "{clean:#?}");
}

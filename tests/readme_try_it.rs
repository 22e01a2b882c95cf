//! The README's first-hour path, run as written: the "Set up" run command (`serve --dev`, here with a free port and
//! the test's binary), then the one copy-pasted block of "Try it" in bash, in a fresh directory, with no secret
//! exported: it must show the `realtime:resource` events of the message it creates, edits and deletes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::ensure_node_modules;

const RUN_COMMAND: &str = "cargo run --release -- serve --dev";
const SHARDCAST_LINE: &str = r#"shardcast() { cargo run -q --release -- "$@"; }"#;

/// The first ```sh block after `## Try it`.
fn try_it_block(readme: &str) -> String {
    let section = &readme[readme.find("\n## Try it").expect("a Try it section")..];
    let start = section.find("```sh\n").expect("a sh block") + 6;
    let end = start + section[start..].find("\n```").expect("end of the block");
    section[start..end].to_owned()
}

#[test]
fn the_readme_run_command_and_one_block_show_a_realtime_resource_event() {
    ensure_node_modules();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    assert!(
        readme.contains(&format!("{RUN_COMMAND}\n")),
        "the Set up run command is `{RUN_COMMAND}`"
    );
    let block = try_it_block(&readme);
    assert!(
        block.contains(SHARDCAST_LINE),
        "the block defines `shardcast`: {block}"
    );
    assert!(
        !block.contains("SHARDCAST_JWT_SECRET"),
        "no secret handled by hand"
    );

    // A fresh directory stands for the repository root: tests/ (the demo client) and nothing else.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    std::os::unix::fs::symlink(root.join("tests"), d.join("tests")).expect("symlink tests/");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let bin = env!("CARGO_BIN_EXE_shardcast");
    let clean = |cmd: &mut Command| {
        for (k, _) in std::env::vars() {
            if k.starts_with("SHARDCAST_") {
                cmd.env_remove(k);
            }
        }
    };
    let mut serve = Command::new(bin);
    clean(&mut serve);
    let mut server = serve
        .args([
            "serve", "--dev", "--listen", &listen, "--no-pin", "--shards", "2",
        ])
        .current_dir(&d)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("serve.log")).expect("log"))
        .spawn()
        .expect("serve");
    let mut first = String::new();
    // Kept open to the end: the server's dev banner follows the first line.
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    stdout.read_line(&mut first).expect("line");
    assert_eq!(first.trim(), format!("shardcast listening on {listen}"));

    let script = block
        .replace(
            SHARDCAST_LINE,
            &format!(r#"shardcast() {{ "{bin}" "$@"; }}"#),
        )
        .replace("127.0.0.1:3000", &listen);
    let mut bash = Command::new("bash");
    clean(&mut bash);
    let out = bash
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&d)
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the block failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for action in ["created", "updated", "deleted"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!(r#"realtime:resource {{"action":"{action}""#))),
            "no {action} event in:\n{stdout}"
        );
    }
    assert!(stdout.contains("hello from curl"), "{stdout}");
}

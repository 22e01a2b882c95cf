//! The `shardcast` command line: `token` prints a token the same configuration verifies, `serve` refuses to start
//! without a JWT secret, and configuration precedence is file < environment < flag.

mod common;

use std::process::{Child, Command, Stdio};

use common::{read_listening_addr, scratch_dir, shardcast_command};
use shardcast::realtime::auth::{AccessVerifier, AuthConfig};

/// `shardcast <args>` with every SHARDCAST_* variable of the test's own environment removed, plus `env`.
fn shardcast(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = shardcast_command(args);
    // Not the repository root: `token` would find the secret a local `serve --dev` left in ./shardcast-data.
    cmd.envs(env.iter().copied())
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    cmd
}

#[test]
fn token_prints_a_token_the_configuration_verifies_and_env_beats_the_file() {
    let d = scratch_dir("cli-token");
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        "[auth]\njwt_secret = \"from-the-file-0123456789abcdef-xyz\"\n",
    )
    .expect("write");
    let cfg = cfg.to_str().expect("utf8");
    let run = |env: &[(&str, &str)]| {
        let out = shardcast(
            &[
                "token",
                "--config",
                cfg,
                "--sub",
                "alice",
                "--ttl",
                "15m",
                "--claim",
                r#"companies=["acme","globex"]"#,
                "--claim",
                "team=blue",
            ],
            env,
        )
        .output()
        .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    };

    let t = run(&[]);
    let user = AccessVerifier::new(&AuthConfig::hs256("from-the-file-0123456789abcdef-xyz"))
        .expect("verifier")
        .verify(&t)
        .expect("the file's secret verifies the token");
    assert_eq!(user.id, "alice");
    assert_eq!(user.companies, vec!["acme", "globex"]);
    assert_eq!(user.claims["team"], "blue");
    let iat = user.claims["iat"].as_u64().expect("iat");
    assert_eq!(user.expires_at_s - iat, 900, "--ttl 15m");

    // The environment overrides the file.
    let t = run(&[("SHARDCAST_JWT_SECRET", "from-the-env-0123456789abcdef-xyz")]);
    assert!(
        AccessVerifier::new(&AuthConfig::hs256("from-the-env-0123456789abcdef-xyz"))
            .expect("v")
            .verify(&t)
            .is_ok()
    );
    let e = AccessVerifier::new(&AuthConfig::hs256("from-the-file-0123456789abcdef-xyz"))
        .expect("v")
        .verify(&t);
    assert_eq!(e.map(|_| ()).unwrap_err().to_string(), "invalid signature");

    let out = shardcast(
        &["token", "--sub", "alice", "--claim", "novalue"],
        &[("SHARDCAST_JWT_SECRET", "s-0123456789-0123456789-0123456789")],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not of the form key=value"));
}

#[test]
fn serve_and_token_refuse_to_run_without_a_jwt_secret_and_say_how_to_set_one() {
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["token", "--sub", "alice"][..],
    ] {
        let out = shardcast(args, &[]).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no JWT secret configured"), "{err}");
        assert!(err.contains("SHARDCAST_JWT_SECRET"), "{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn serve_and_token_refuse_an_hs256_secret_shorter_than_32_bytes() {
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["token", "--sub", "alice"][..],
    ] {
        for secret in ["x", "0123456789abcdef0123456789abcde"] {
            let out = shardcast(args, &[("SHARDCAST_JWT_SECRET", secret)])
                .output()
                .expect("run");
            assert_eq!(out.status.code(), Some(2), "{args:?} {secret:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("HS256 JWT secret is {} bytes", secret.len()))
                    && err.contains("at least 32 bytes"),
                "{err}"
            );
            assert!(
                !err.contains(secret) || secret.len() < 2,
                "secret not echoed: {err}"
            );
        }
    }
    // 32 bytes is enough.
    let out = shardcast(
        &["token", "--sub", "alice"],
        &[("SHARDCAST_JWT_SECRET", "0123456789abcdef0123456789abcdef")],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(0));
}

struct Running(Child, std::net::SocketAddr);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shardcast <args>` started with `env`, once it listens. Its stderr goes to `<dir>/serve-<n>.log`, which a failed
/// start shows.
fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = dir.join(format!("serve-{n}.log"));
    let mut child = shardcast(args, env)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn");
    let addr = read_listening_addr(&mut child, Some(&log));
    Running(child, addr)
}

fn shard_count(addr: std::net::SocketAddr) -> usize {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    (0..64)
        .take_while(|i| text.contains(&format!("shard=\"{i}\"")))
        .count()
}

#[test]
fn serve_configuration_precedence_is_file_then_env_then_flag() {
    let d = scratch_dir("cli-precedence");
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 3\npin_shards = false\n[auth]\njwt_secret = \"s-0123456789abcdef-0123456789abcdef\"\n[orm]\nembedded_path = \"{}\"\n",
            d.join("db.redb").display()
        ),
    )
    .expect("write");
    let cfg = cfg.to_str().expect("utf8");

    let file_only = start(&d, &["serve", "--config", cfg], &[]);
    assert_eq!(shard_count(file_only.1), 3, "the file's shards");
    drop(file_only);
    let env = start(
        &d,
        &["serve", "--config", cfg],
        &[("SHARDCAST_SHARDS", "2")],
    );
    assert_eq!(shard_count(env.1), 2, "the environment beats the file");
    drop(env);
    let flag = start(
        &d,
        &["serve", "--config", cfg, "--shards", "1"],
        &[("SHARDCAST_SHARDS", "2")],
    );
    assert_eq!(shard_count(flag.1), 1, "the flag beats the environment");
}

#[test]
fn rs256_keys_from_files_sign_with_token_and_verify_in_serve() {
    let d = scratch_dir("cli-rs256");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/realtime/testdata");
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\npin_shards = false\n[auth]\njwt_algorithm = \"RS256\"\n\
             jwt_public_key_file = \"{}\"\njwt_private_key_file = \"{}\"\n[orm]\nembedded_path = \"{}\"\n",
            data.join("rsa_public.pem").display(),
            data.join("rsa_private.pem").display(),
            d.join("db.redb").display()
        ),
    )
    .expect("write");
    let cfg = cfg.to_str().expect("utf8");
    let out = shardcast(
        &[
            "token",
            "--config",
            cfg,
            "--sub",
            "alice",
            "--claim",
            r#"companies=["acme"]"#,
        ],
        &[],
    )
    .output()
    .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let header = token.split('.').next().expect("header");
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64");
    assert!(String::from_utf8_lossy(&header).contains("\"RS256\""));

    let server = start(&d, &["serve", "--config", cfg], &[]);
    let status_of = |token: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.1).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        let req = format!(
            "GET /api/v1/companies/acme/workspaces/w/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    };
    assert!(
        status_of(&token).starts_with("HTTP/1.1 200 "),
        "RS256 token accepted"
    );
    let hs = shardcast::realtime::auth::AccessSigner::new(&AuthConfig::hs256(
        "s-0123456789abcdef-0123456789abcdef",
    ))
    .expect("signer")
    .sign("alice", 3600, &serde_json::Map::new())
    .expect("sign");
    let refused = status_of(&hs);
    assert!(refused.starts_with("HTTP/1.1 401 "), "{refused}");
    assert!(
        refused.contains(r#"{"code":"unauthenticated","message":"invalid algorithm"}"#),
        "{refused}"
    );
}

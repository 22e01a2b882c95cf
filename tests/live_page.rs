//! The live page at `/` in a real headless Chromium (Debian's `chromium`, from tests/services/chromium.sh), driven
//! over the Chrome DevTools protocol: the page connects with its own Socket.IO client, shows the server's shards,
//! creates a channel through its form and joins its rooms; a message created over REST by the test, and one sent
//! from the page's form, both appear on the page as `realtime:resource` events. A screenshot is written to
//! `target/tmp/live-page.png` (and to `$SHARDCAST_SCREENSHOT_OUT` when set: the README's `src/app/live-page.png`, beside the page it shows).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Ws, WsEvent, request, request_with};
use serde_json::{Value, json};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/chromium.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("ensure")
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/services/chromium.sh");
    assert!(
        out.status.success(),
        "tests/services/chromium.sh ensure failed"
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// One DevTools session on a page target.
struct Cdp {
    ws: Ws,
    next_id: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send_text(&json!({"id": id, "method": method, "params": params}).to_string());
        loop {
            match self.ws.recv() {
                WsEvent::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("CDP json");
                    if v["id"] == id {
                        assert!(v.get("error").is_none(), "{method}: {v}");
                        return v["result"].clone();
                    }
                }
                other => panic!("DevTools connection: {other:?}"),
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true (a safety net of 60 s, not a timing assertion).
    fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until the document has loaded, its elements are absent: that counts as "not yet".
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded) != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "{what}: page text: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn devtools_port(stderr: std::process::ChildStderr) -> u16 {
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("chromium stderr");
        if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
            let port = rest.split('/').next().expect("port");
            return port.parse().expect("port number");
        }
    }
    panic!("chromium did not print its DevTools address");
}

#[test]
fn a_message_created_over_rest_and_one_sent_from_the_page_appear_on_the_live_page() {
    let chrome = chromium();
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("live-page-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SHARDCAST_") {
            cmd.env_remove(k);
        }
    }
    let mut server = cmd
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
        ])
        .arg("--data-dir")
        .arg(d.join("data"))
        .arg("--db-path")
        .arg(d.join("data/db.redb"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("serve.log")).expect("log"))
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let _server = Killed(server);
    let mut addr: Option<SocketAddr> = None;
    let mut page_url = String::new();
    let mut token = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(a) = line.strip_prefix("shardcast listening on ") {
            addr = Some(a.parse().expect("addr"));
        } else if let Some(u) = line.strip_prefix("live page: ") {
            page_url = u.to_owned();
        } else if let Some(t) = line.strip_prefix("TOKEN=") {
            token = t.to_owned();
            break;
        }
    }
    let addr = addr.expect("listening line");
    assert!(
        page_url.starts_with(&format!("http://{addr}/#token=")),
        "{page_url}"
    );

    let mut browser = Command::new(chrome)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1100,820",
        ])
        .arg(format!("--user-data-dir={}", d.join("chrome").display()))
        .arg(&page_url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let port = devtools_port(browser.stderr.take().expect("stderr"));
    let _browser = Killed(browser);
    let devtools: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let targets: Value =
        serde_json::from_slice(&request(devtools, "GET", "/json/list", b"").body).expect("targets");
    let page = targets
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target");
    let ws_url = page["webSocketDebuggerUrl"].as_str().expect("ws url");
    let path = &ws_url[ws_url.find("/devtools/").expect("path")..];
    let mut cdp = Cdp {
        ws: Ws::connect(devtools, path),
        next_id: 0,
    };

    cdp.wait_for(
        "document.getElementById('status').textContent === 'authenticated'",
        "the page authenticates with the token of its URL",
    );
    cdp.wait_for(
        "document.getElementById('shards').textContent === '2'",
        "the page shows the shards from /metrics",
    );
    cdp.eval("document.getElementById('channel').value = 'live-page'; document.getElementById('create-channel').click(); true");
    cdp.wait_for(
        "document.getElementById('joined').textContent === '2'",
        "the page joined the channel's and its messages' rooms",
    );
    cdp.wait_for(
        "document.getElementById('rooms').textContent === '2'",
        "the page shows the server's rooms, summed over its shards",
    );

    let auth = format!("Bearer {token}");
    let r = request_with(
        addr,
        "POST",
        "/api/v1/channels/live-page/messages",
        &[("Authorization", &auth)],
        json!({"resource": {"text": "hello from the test over REST"}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    cdp.wait_for(
        "document.getElementById('events').textContent.includes('hello from the test over REST')",
        "the message created over REST appears on the page",
    );
    cdp.eval("document.getElementById('text').value = 'hello from the live page'; document.getElementById('send').click(); true");
    cdp.wait_for(
        "document.getElementById('events').textContent.includes('hello from the live page')",
        "the message sent from the page appears on the page",
    );
    cdp.wait_for(
        "Number(document.getElementById('events-total').textContent) >= 2",
        "the page counts the server's realtime events (their rate beside)",
    );
    let created = cdp.eval(
        "[...document.querySelectorAll('#events li')].map(li => JSON.parse(li.dataset.json).action).join(',')",
    );
    assert_eq!(
        created, "created,created",
        "the REST message, then the page's message"
    );

    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("data"))
        .expect("png");
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png"),
        &png,
    )
    .expect("write");
    if let Ok(out) = std::env::var("SHARDCAST_SCREENSHOT_OUT") {
        std::fs::write(out, &png).expect("write the screenshot");
    }
}

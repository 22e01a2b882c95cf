//! A MongoDB-wire server of a test's own (the binary tests/services/mongo.sh installed: SecantusDB, or nx-27017),
//! started and stopped by PID, for tests that take the database down and bring it back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, scratch_dir};

/// Our own MongoDB-wire server (the binary tests/services/mongo.sh installed), started and stopped by PID.
pub struct OwnMongo {
    bin: String,
    kind: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnMongo {
    pub fn new(name: &str) -> OwnMongo {
        let bin = std::env::var("SHARDCAST_TEST_MONGO_BIN")
            .expect("SHARDCAST_TEST_MONGO_BIN (written by tests/services/mongo.sh; tests/run.sh sources it)");
        OwnMongo {
            bin,
            kind: std::env::var("SHARDCAST_TEST_MONGO_KIND").unwrap_or_else(|_| "secantus".into()),
            port: free_port(),
            dir: scratch_dir(name),
            child: None,
        }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new(&self.bin);
        let port = self.port.to_string();
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        if self.kind == "nx" {
            cmd.arg("--data-dir")
                .arg(&data)
                .args(["--host", "127.0.0.1", "-p", &port]);
            cmd.arg("--pid-file").arg(self.dir.join("nx.pid"));
        } else {
            cmd.args(["--host", "127.0.0.1", "--port", &port, "--storage-path"])
                .arg(&data);
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the MongoDB-wire server starts"),
        );
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "own MongoDB-wire server did not listen on {} within 60 s",
            self.port
        );
    }

    /// SIGTERM to its PID, SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnMongo {
    fn drop(&mut self) {
        self.stop();
    }
}

//! End-to-end tests of the `millrace` binary with the `rdkafka` crate (bundled librdkafka);
//! the tests are in `tests/`. This library only starts and stops the broker for them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `millrace serve` child process on a free port with its own data directory.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
}

/// The broker binary: `MILLRACE_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    std::env::var_os("MILLRACE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/millrace")
    })
}

impl Broker {
    /// Starts a broker on a free port, data in `data_dir`.
    pub fn start(data_dir: &Path) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Broker::start_on(data_dir, port)
    }

    pub fn start_on(data_dir: &Path, port: u16) -> Broker {
        let bin = binary();
        let child = Command::new(&bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (build it with `cargo build --bin millrace`): {e}",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child: Some(child), port, data_dir: data_dir.to_owned() }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let status = c.wait().expect("wait");
            assert!(status.success(), "broker exited with {status}");
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal with kill(1), so that this crate needs no unsafe code.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

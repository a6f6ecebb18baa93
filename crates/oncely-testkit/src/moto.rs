//! An S3-compatible server for tests: moto's `moto_server`, started on a free port of
//! 127.0.0.1 and stopped when dropped.
//!
//! The server is `$ONCELY_MOTO_SERVER` or `moto_server` on the `PATH` (`pip install
//! 'moto[server]'`; `.ci/run` installs it). When neither runs, [`Moto::start`] says
//! `SKIPPED:` on stderr and answers `None`, except under `CI=true`, where a test that
//! needs S3 must not pass without it: it panics.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, ensure};

/// A running `moto_server`.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Starts one, or says why not (see the module's documentation).
    #[allow(clippy::panic)]
    pub async fn start() -> Option<Self> {
        match Self::spawn().await {
            Ok(moto) => Some(moto),
            Err(error) => {
                let in_ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
                assert!(!in_ci, "moto_server is needed under CI=true: {error}");
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: no S3-compatible server ({error}); pip install 'moto[server]'"
                );
                None
            }
        }
    }

    /// Starts one, or says why it could not (for callers that are not tests).
    pub async fn spawn() -> Result<Self, Error> {
        let program =
            std::env::var("ONCELY_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
        // A port free a moment ago may be taken by the time moto binds it; moto then
        // exits, and another port is tried. Failing to start it or a moto that never
        // answers is not worth another try.
        let mut exits = Vec::new();
        for _ in 0..3 {
            match Self::spawn_on_a_free_port(&program).await? {
                Ok(moto) => return Ok(moto),
                Err(exited) => exits.push(exited),
            }
        }
        Err(Error::Setup(format!(
            "{program} exited before answering, on three ports: {}",
            exits.join("; ")
        )))
    }

    /// Moto on a port that was free a moment ago, or how it exited before answering.
    async fn spawn_on_a_free_port(program: &str) -> Result<Result<Self, String>, Error> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .during_with(|| format!("starting {program}"))?;
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        // Generous: on a loaded machine (the chaos tests run beside each other) Python
        // takes its time to import moto.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answer = client.get(&moto.endpoint).send().await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                return Ok(Ok(moto));
            }
            if let Some(status) = moto.child.try_wait()? {
                return Ok(Err(format!("{status} on {}", moto.endpoint)));
            }
            ensure!(
                Instant::now() < deadline,
                "{program} did not answer on {} within 120 s",
                moto.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a bucket (unsigned: moto takes any caller).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        let answer = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await?;
        ensure!(
            answer.status().is_success(),
            "creating bucket {bucket} answered {}",
            answer.status()
        );
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

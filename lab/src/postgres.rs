//! A real PostgreSQL server for tests and benchmarks, from Debian's `postgresql`
//! package: `initdb` and `pg_ctl` in a temporary directory, listening on a free
//! loopback port, stopped (and its directory removed) when dropped. Never the system
//! service. As root, the server runs as the package's `postgres` account (PostgreSQL
//! refuses to run as root).

use super::{free_port, io, is_root, listening, run, LabError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The Debian package that provides the server binaries.
pub const PACKAGE: &str = "postgresql";
/// The `postgres` role's password on lab servers (a test fixture, not a secret).
pub const PASSWORD: &str = "lab-postgres-password";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
fn bindir() -> Result<PathBuf, LabError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or(LabError::MissingPostgres)
}

impl Postgres {
    /// Initializes and starts a server; waits until it accepts connections.
    pub fn start() -> Result<Self, LabError> {
        let bin = bindir()?;
        let dir = tempfile::Builder::new().prefix("lab-postgres-").tempdir().map_err(io(Path::new("/tmp")))?;
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(dir.path()))?;
        }
        let pg = Self { dir, bin, port: free_port()?, as_postgres };
        let data = pg.data();
        // Password authentication over TCP, so the tests prove the password travels.
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).map_err(io(&pwfile))?;
        run(pg
            .command("initdb")
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data))?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            pg.port,
            data.display()
        );
        run(pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.log())
            .args(["-w", "-t", "60", "-o", &options, "start"]))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(pg.port) {
            if Instant::now() > deadline {
                return Err(LabError::Start {
                    what: "PostgreSQL".into(),
                    secs: 30,
                    log: std::fs::read_to_string(pg.log()).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A server binary, run as `postgres` when this process is root.
    fn command(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` (owned by the `postgres` role).
    pub fn create_database(&self, name: &str) -> Result<(), LabError> {
        run(self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .env("PGPASSWORD", PASSWORD))
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`: no password in it; it is [`PASSWORD`].
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

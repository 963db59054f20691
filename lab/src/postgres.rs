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
    /// With TLS: the CA certificate that signed the server's (for `sslrootcert`).
    ca: Option<PathBuf>,
    /// The server options it was started with.
    options: String,
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
        Self::start_with(false)
    }

    /// A server that accepts TCP connections over TLS only (`hostssl`), with a certificate
    /// for `127.0.0.1` signed by a CA made for it ([`Postgres::ca`]).
    pub fn start_tls() -> Result<Self, LabError> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Self, LabError> {
        let bin = bindir()?;
        let dir = tempfile::Builder::new().prefix("lab-postgres-").tempdir().map_err(io(Path::new("/tmp")))?;
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(dir.path()))?;
        }
        let mut pg = Self { dir, bin, port: free_port()?, as_postgres, ca: None, options: String::new() };
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
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            pg.port,
            data.display()
        );
        if tls {
            options.push_str(&pg.make_certificates(&data)?);
        }
        pg.options = options;
        pg.start_again()?;
        Ok(pg)
    }

    /// Starts the server again after [`Postgres::stop`], with its data and options; waits
    /// until it accepts connections.
    pub fn start_again(&self) -> Result<(), LabError> {
        run(self.command("pg_ctl").arg("-D").arg(self.data()).arg("-l").arg(self.log()).args([
            "-w",
            "-t",
            "60",
            "-o",
            &self.options,
            "start",
        ]))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(self.port) {
            if Instant::now() > deadline {
                return Err(LabError::Start {
                    what: "PostgreSQL".into(),
                    secs: 30,
                    log: std::fs::read_to_string(self.log()).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A CA and a server certificate for `127.0.0.1` (openssl), TCP allowed over TLS only;
    /// returns the server options that turn TLS on.
    fn make_certificates(&mut self, data: &Path) -> Result<String, LabError> {
        let d = self.dir.path();
        let (ca_key, ca, key, csr, crt, ext) = (
            d.join("ca.key"),
            d.join("ca.crt"),
            data.join("server.key"),
            d.join("server.csr"),
            data.join("server.crt"),
            d.join("san.ext"),
        );
        let openssl = |args: &[&str]| run(Command::new("openssl").args(args));
        let p = |p: &Path| p.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
            "-subj",
            "/CN=lab-postgres-ca",
            "-days",
            "2",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").map_err(io(&ext))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&crt),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ])?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(io(&key))?;
        if self.as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&key).arg(&crt))?;
        }
        // TCP only over TLS: a plain connection is refused.
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(io(&hba))?;
        let text: String = text
            .lines()
            .map(|l| if l.starts_with("host ") { format!("hostssl{}\n", &l[4..]) } else { format!("{l}\n") })
            .collect();
        std::fs::write(&hba, text).map_err(io(&hba))?;
        self.ca = Some(ca);
        Ok(format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", crt.display(), key.display()))
    }

    /// The CA certificate of a TLS server.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
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

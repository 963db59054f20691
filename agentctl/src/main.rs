//! `agentctl`: parses, resolves settings, calls the `controlplane` library, renders.

mod cli;
mod commands;
mod failure;
mod render;

use clap::Parser as _;
use cli::{Cli, Command, KeysCommand, ProveCommand, ReceiptsCommand, ReleaseCommand, StateCommand};
use failure::Failure;
use render::Report;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

/// Resolved global settings every command receives.
#[derive(Debug)]
pub struct Globals {
    pub manifests: std::path::PathBuf,
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's own exit for --help/--version is success; usage errors are 2.
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Command::Guard { dir } = &cli.command {
        controlplane::hygiene::watch(dir, std::io::stdin());
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.verbose);
    // Commands that reach hosts run under a guard: whatever ends this process, the guard
    // stops every ssh process of the run and removes the run's temp directory. TMPDIR
    // points into it, so every temp file of the run (ours, our crates', ssh's) is swept.
    let guard = if cli.command.reaches_hosts() {
        match start_guard() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("error: cannot start the cleanup guard\n  Caused by: {e}\nhint: check that the temp directory is writable");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let globals = Globals { manifests: cli.manifests, json: cli.json };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime\n  Caused by: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command, &globals));
    drop(runtime);
    if let Some(g) = guard {
        g.finish();
    }
    let mut stdout = std::io::stdout().lock();
    match result {
        Ok(report) => {
            if !report.is_streamed() {
                let _ = writeln!(stdout, "{}", report.render(globals.json));
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            // Under `--json` a failure is one JSON document on stdout too.
            match (&failure.output, &failure.json) {
                (_, Some(doc)) if globals.json => {
                    let _ = writeln!(stdout, "{doc:#}");
                }
                (Some(out), _) => {
                    let _ = writeln!(stdout, "{out}");
                }
                (None, _) if globals.json => {
                    let _ = writeln!(stdout, "{:#}", failure.to_json());
                }
                (None, _) => {}
            }
            eprintln!("{failure}");
            failure.exit_code()
        }
    }
}

/// Starts the guard (this binary's hidden `__guard` command) on a fresh run directory.
fn start_guard() -> std::io::Result<controlplane::hygiene::Guard> {
    let exe = std::env::current_exe()?;
    let guard = controlplane::hygiene::Guard::start(&std::env::temp_dir(), &exe, &["__guard"])?;
    // Single-threaded still: no other thread reads the environment concurrently.
    std::env::set_var("TMPDIR", guard.dir());
    Ok(guard)
}

async fn run(command: Command, g: &Globals) -> Result<Report, Failure> {
    match command {
        Command::Guard { .. } => Ok(Report::text(String::new())),
        Command::Init { dir } => commands::init::run(&dir).await,
        Command::Check { ci: None } => commands::check::run(g),
        Command::Check { ci: Some(dir) } => commands::check::ci(&dir),
        Command::Keys { command: KeysCommand::Generate { out } } => commands::keys::generate(&out),
        Command::Sign { image, key, format } => commands::sign::sign(g, &image, &key, format).await,
        Command::Attest { image, predicate, kind, key, format } => {
            commands::sign::attest(g, &image, &predicate, kind, &key, format).await
        }
        Command::Verify { image, key } => commands::verify::run(g, &image, &key).await,
        Command::VerifyBlob {
            artifact,
            bundle,
            key,
            certificate_identity,
            certificate_identity_regexp,
            certificate_oidc_issuer,
            trusted_root,
        } => {
            let identity = commands::verify::Identity {
                exact: certificate_identity,
                regexp: certificate_identity_regexp,
                issuer: certificate_oidc_issuer,
            };
            commands::verify::blob(&artifact, &bundle, key, identity, trusted_root.as_deref())
        }
        Command::Release { command: ReleaseCommand::Add { service, image, commit, provenance, sbom } } => {
            let registration = controlplane::catalog::Registration {
                service: &service,
                image: &image,
                commit: &commit,
                provenance: provenance.as_deref(),
                sbom: sbom.as_deref(),
                operator: "",
            };
            commands::release::add(g, registration).await
        }
        Command::Release { command: ReleaseCommand::List { service } } => commands::release::list(g, &service).await,
        Command::Release { command: ReleaseCommand::Show { service, release } } => {
            commands::release::show(g, &service, &release).await
        }
        Command::Promote { service, env, release, apply, out } => {
            let target = commands::deploy::Target::Promote { release: &release };
            commands::deploy::plan_and_maybe_apply(g, &service, &env, target, apply, out.as_deref()).await
        }
        Command::Rollback { service, env, to, apply, out } => {
            let target = commands::deploy::Target::Rollback { to: to.as_deref() };
            commands::deploy::plan_and_maybe_apply(g, &service, &env, target, apply, out.as_deref()).await
        }
        Command::History { service, env } => commands::history::run(g, &service, &env).await,
        Command::Watch {
            env,
            interval,
            fresh_interval,
            full_interval,
            metrics,
            webhook,
            webhook_secret_env,
            drift_receipts,
        } => {
            let args = commands::watch::Args {
                env,
                interval: seconds(interval, 0.1),
                fresh_interval: seconds(fresh_interval, 0.5),
                full_interval: seconds(full_interval, 0.0),
                metrics,
                webhook,
                webhook_secret_env,
                drift_receipts,
            };
            commands::watch::run(g, args).await
        }
        Command::Rehearse { service, env, release, apply } => {
            commands::deploy::rehearse(g, &service, &env, &release, apply).await
        }
        Command::Apply { plan, approvals } => commands::deploy::apply_saved(g, &plan, &approvals).await,
        Command::Resume { plan } => commands::deploy::resume(g, &plan).await,
        Command::Approve { plan, key, print_statement, statement, signature, out } => {
            let how = match (key, print_statement, statement.zip(signature)) {
                (Some(key), _, _) => commands::approve::How::Key(key),
                (None, true, _) => commands::approve::How::PrintStatement,
                (None, false, Some((statement, signature))) => commands::approve::How::Signed { statement, signature },
                (None, false, None) => return Err(failure::Failure::new(
                    failure::Code::Invalid,
                    anyhow::anyhow!("say how to sign: `--key FILE`, or `--print-statement` then `--statement FILE --signature FILE.sig`"),
                )),
            };
            commands::approve::run(g, &plan, how, out.as_deref()).await
        }
        Command::Adopt { service, env, host, apply } => {
            commands::adopt::adopt(g, &service, &env, host.as_deref(), apply).await
        }
        Command::Repair { service, env, host, apply } => commands::repair::run(g, &service, &env, &host, apply).await,
        Command::Host { command: cli::HostCommand::Forget { host, env, apply } } => {
            commands::adopt::forget(g, &host, &env, apply).await
        }
        Command::Unlock { service, env, force } => commands::deploy::unlock(g, &service, &env, force).await,
        Command::Status { service, env, watch, concurrency, timeout } => {
            let args = commands::status::Args {
                service: service.as_deref(),
                env: env.as_deref(),
                watch,
                concurrency,
                timeout,
            };
            commands::status::run(g, args).await
        }
        Command::Prove { command: Some(ProveCommand::Egress { service, env }), .. } => {
            commands::prove::egress(g, &service, &env).await
        }
        Command::Prove { command: None, env: Some(env), workflows, receipt_keys } => {
            commands::prove::readiness(g, &env, workflows.as_deref(), &receipt_keys).await
        }
        Command::Prove { command: None, env: None, .. } => Err(crate::failure::Failure::new(
            crate::failure::Code::Invalid,
            anyhow::anyhow!("`prove` needs an environment (`agentctl prove ENV`) or a control (`agentctl prove egress SERVICE --env ENV`)"),
        )),
        Command::State { command: StateCommand::Migrate { to, to_password_env } } => {
            commands::state::migrate(g, &to, to_password_env.as_deref()).await
        }
        Command::Receipts { command } => match command {
            ReceiptsCommand::List { dir } => commands::receipts::list(g, dir.as_deref()).await,
            ReceiptsCommand::Show { id, dir } => commands::receipts::show(g, &id, dir.as_deref()).await,
            ReceiptsCommand::Verify { dir, store, key } => {
                commands::receipts::verify(g, dir.as_deref(), store, &key).await
            }
            ReceiptsCommand::Export { dir } => commands::receipts::export(g, &dir).await,
            ReceiptsCommand::Report { out, dir, key } => {
                commands::receipts::report(g, &out, dir.as_deref(), &key).await
            }
        },
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "agentctl", &mut buf);
            Ok(Report::text(String::from_utf8_lossy(&buf).trim_end().to_owned()))
        }
    }
}

/// Logs go to stderr; `AGENTCTL_LOG` overrides `-v`; no colour when `NO_COLOR` is set
/// or stderr is not a terminal. The levels (docs/OPERATIONS.md, "Logs"):
/// none: warnings; `-v`: each SSH connection, remote step and receipt, with timings;
/// `-vv`: also each registry request and agentctl's own debug events; `-vvv`: everything,
/// the libraries' (SQL statements, SSH and HTTP internals) included.
fn init_tracing(verbose: u8) {
    const OURS: [&str; 3] = ["agentctl", "controlplane", "controlplane_core"];
    let ours = |level: &str| OURS.iter().map(|c| format!(",{c}={level}")).collect::<String>();
    let default = match verbose {
        0 => "warn".to_owned(),
        1 => format!("warn{}", ours("info")),
        2 => format!("warn{}", ours("debug")),
        _ => "debug".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&default));
    let color = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .init();
}

/// A duration from a number of seconds on the command line: at least `min`, at most a
/// year (NaN and infinities cannot reach `Duration`, which would panic on them).
fn seconds(value: f64, min: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(value.max(min).min(365.0 * 86400.0))
}

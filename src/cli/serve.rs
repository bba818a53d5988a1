//! `switchboard serve`: configuration from defaults, file and flags, a
//! banner of what was bound, and signal-driven graceful shutdown.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::ServeArgs;
use crate::config::{ServerConfig, parse_echo_listen, parse_tcp_listen, parse_time_listen};
use crate::server::{Server, Service};

/// Builds the configuration: defaults, then the file, then the flags.
pub fn config_from_args(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut cfg = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if !args.echo.is_empty() {
        cfg.echo.listen = collect(&args.echo, parse_echo_listen)?;
    }
    if !args.time.is_empty() {
        cfg.time.listen = collect(&args.time, parse_time_listen)?;
    }
    if let Some(m) = args.echo_mode {
        cfg.echo.mode = m;
    }
    if args.utc {
        cfg.time.utc = true;
    }
    if let Some(n) = args.max_connections {
        cfg.echo.max_connections = n;
    }
    if let Some(n) = args.max_connections_per_source {
        cfg.echo.max_connections_per_source = n;
    }
    if let Some(d) = args.idle_timeout {
        cfg.echo.idle_timeout = d;
    }
    if let Some(n) = args.time_reply_cap {
        cfg.time.reply_cap = n;
    }
    if let Some(n) = args.udp_rate_limit {
        cfg.udp.rate_limit = n;
    }
    if !args.exec.is_empty() {
        cfg.exec.listen = collect(&args.exec, parse_tcp_listen)?;
    }
    if !args.exec_legacy.is_empty() {
        cfg.exec.legacy_listen = collect(&args.exec_legacy, parse_tcp_listen)?;
    }
    if args.no_auth {
        cfg.exec.no_auth = true;
    }
    if let Some(p) = &args.token_file {
        cfg.exec.token_file = Some(p.clone());
    }
    if let Some(a) = &args.auth {
        cfg.exec.auth = a.parse()?;
    }
    for (flag, setting) in [
        (&args.authorized_keys, &mut cfg.exec.authorized_keys),
        (&args.host_key, &mut cfg.exec.host_key),
        (&args.trusted_user_ca, &mut cfg.exec.trusted_user_ca),
        (
            &args.authorized_principals,
            &mut cfg.exec.authorized_principals,
        ),
        (&args.revoked_keys, &mut cfg.exec.revoked_keys),
    ] {
        if let Some(p) = flag {
            *setting = Some(p.clone());
        }
    }
    if let Some(u) = &args.run_as {
        cfg.exec.run_as = Some(u.clone());
    }
    cfg.exec.allow_root |= args.allow_root;
    cfg.exec.argv_only |= args.argv_only;
    cfg.exec
        .allowed_programs
        .extend(args.allow_program.iter().cloned());
    cfg.exec.allow_env &= !args.forbid_env;
    cfg.exec.accept_env.extend(args.accept_env.iter().cloned());
    cfg.exec.allow_cwd &= !args.forbid_cwd;
    cfg.exec.allow_pty &= !args.forbid_pty;
    cfg.exec.files_root.extend(args.files_root.iter().cloned());
    if let Some(p) = &args.tls_cert {
        cfg.exec.tls_cert = Some(p.clone());
    }
    if let Some(p) = &args.tls_key {
        cfg.exec.tls_key = Some(p.clone());
    }
    cfg.exec.tls_self_signed |= args.tls_self_signed;
    cfg.exec.allow_plaintext |= args.allow_plaintext;
    if !args.metrics.is_empty() {
        cfg.server.metrics = collect(&args.metrics, parse_tcp_listen)?;
    }
    if let Some(d) = args.shutdown_grace {
        cfg.server.shutdown_grace = d;
    }
    if let Some(a) = &args.audit_log {
        cfg.server.audit_log = a.clone().into();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// A service's endpoints from its repeated flag; `none` (alone) switches
/// the service off, so one server can run without the others' default
/// ports (`serve --echo 127.0.0.1:0 --time none --exec none`).
fn collect<T>(
    items: &[String],
    parse: fn(&str) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<Vec<T>> {
    if items.iter().any(|s| s == "none") {
        if items.len() > 1 {
            anyhow::bail!("`none` switches a service off and cannot be combined with endpoints");
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for s in items {
        out.extend(parse(s)?);
    }
    Ok(out)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = config_from_args(&args)?;
    if args.check_config {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(Server::preflight(&cfg))?;
        // Said on stdout for scripts; the exit status is the answer.
        let _ = writeln!(std::io::stdout(), "configuration OK");
        return Ok(ExitCode::SUCCESS);
    }
    // SAFETY: no other thread exists yet (the runtime starts below), and
    // descriptors 3.. were opened by no one in this process.
    let passed = unsafe { crate::activation::listen_fds()? };

    match crate::sys::raise_fd_limit() {
        Ok(n) => info!(open_files = n, "file-descriptor limit"),
        Err(e) => warn!(error = %e, "could not raise the file-descriptor limit"),
    }
    crate::auditlog::open(&cfg.server.audit_log)?;
    // A file-size limit (ulimit -f, LimitFSIZE=) makes a transfer's write
    // fail with EFBIG, answered as no_space, instead of SIGXFSZ ending the
    // server. Jobs start with every signal at its default again.
    crate::sys::ignore_signal(libc::SIGXFSZ);
    // This process is the server binary: it reaps every orphan and starts
    // a keeper so jobs die with it.
    crate::server::exec::own_process(cfg.exec.kill_grace);
    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    rt.block_on(async move {
        let server = match passed {
            Some(sockets) => {
                info!(sockets = sockets.len(), "socket-activated");
                Server::from_activation(cfg, sockets).await?
            }
            None => Server::bind(cfg).await?,
        };
        reload_on_sighup(server.reloader(), args)?;
        let shutdown = stop_on_signals()?;
        // Ready only now that every signal has its handler: a SIGHUP sent
        // as soon as the banner appears (or READY=1 arrives) would
        // otherwise find the default action, and end the server.
        // A daemon whose stdout is gone (closed pipe, full disk) still
        // serves: the banner is for people and scripts, not for running.
        if let Err(e) = print_banner(&server) {
            warn!(error = %e, "could not print the banner on stdout");
        }
        if let Err(e) =
            crate::activation::notify(&format!("READY=1\nMAINPID={}", std::process::id()))
        {
            warn!(error = %e, "sd_notify failed");
        }
        server.run(shutdown).await;
        info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    // Connection tasks still running after the grace are dropped here.
    rt.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: reads the configuration again (file and flags) and applies
/// what can change while connections stay up.
fn reload_on_sighup(reloader: crate::server::Reloader, args: ServeArgs) -> anyhow::Result<()> {
    let mut sighup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            let _ = crate::activation::notify("RELOADING=1");
            // Whatever becomes of the reload: logrotate's HUP must
            // reopen the trail.
            crate::auditlog::reopen();
            let reloaded = match config_from_args(&args) {
                Ok(cfg) => reloader.reload(cfg).await,
                Err(e) => Err(e),
            };
            match reloaded {
                Ok(warnings) => {
                    for w in warnings {
                        warn!("reload: {w}");
                    }
                    info!("configuration reloaded");
                }
                Err(e) => error!("reload failed, keeping the running configuration: {e:#}"),
            }
            let _ = crate::activation::notify("READY=1");
        }
    });
    Ok(())
}

/// SIGINT or SIGTERM cancels the returned token (graceful shutdown); a
/// second one exits at once (the keeper then kills what jobs are left).
fn stop_on_signals() -> anyhow::Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT received"),
            _ = sigterm.recv() => info!("SIGTERM received"),
        }
        let _ = crate::activation::notify("STOPPING=1");
        trigger.cancel();
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        warn!("second signal: exiting without waiting for connections");
        crate::logsink::flush(std::time::Duration::from_secs(1));
        std::process::exit(130);
    });
    Ok(shutdown)
}

/// Prints what was bound, real ports included, on stdout (so scripts and
/// tests can read it) and flushes it.
fn print_banner(server: &Server) -> anyhow::Result<()> {
    let cfg = server.config();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} serving:", crate::VERSION)?;
    for b in server.endpoints() {
        let detail = match b.service {
            Service::Echo => format!("mode={}", cfg.echo.mode.name()),
            Service::Time => format!("clock={}", if cfg.time.utc { "utc" } else { "local" }),
            Service::Exec if cfg.exec.no_auth => "auth=none".to_string(),
            Service::Exec => format!("auth={}", cfg.exec.auth.name()),
            Service::ExecLegacy => "tutorial protocol, unauthenticated".to_string(),
            Service::Metrics => "GET /metrics (Prometheus)".to_string(),
        };
        writeln!(
            out,
            "  {:<11} {:<28} {detail}",
            b.service,
            b.endpoint().to_string()
        )?;
    }
    if let Some(t) = server.tls_info() {
        let state = if t.created { "created" } else { "from" };
        writeln!(out, "  tls   certificate {state} {}", t.cert.display())?;
        writeln!(out, "  tls   fingerprint sha256:{}", t.fingerprint)?;
        if let Some(key) = &t.self_signed_key {
            writeln!(
                out,
                "  tls   self-signed, valid {} days from its creation; to rotate it, remove it \
                 and {} and restart (clients then pin the new fingerprint)",
                crate::tls::SELF_SIGNED_DAYS,
                key.display()
            )?;
        }
    }
    for line in server.auth_lines() {
        writeln!(out, "  {line}")?;
    }
    let exec = server
        .endpoints()
        .iter()
        .any(|b| matches!(b.service, Service::Exec | Service::ExecLegacy));
    if exec {
        writeln!(out, "  exec  {}", server.exec_jobs())?;
    }
    writeln!(
        out,
        "ready (pid {}); SIGINT or SIGTERM stops",
        std::process::id()
    )?;
    out.flush()?;
    Ok(())
}

//! Detached jobs from the command line (PROTOCOL.md §3.10): the end of
//! `exec --detach` (the job's ID printed), `switchboard jobs` (the
//! caller's, listed or stopped) and `switchboard attach` (one followed
//! as `exec` follows a job it started, except that leaving does not end
//! it).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use encoding_rs::Encoding;

use super::exec::{LocalInput, OUTPUT_WINDOW, Output, report, run_job};
use super::input::Target;
use super::terminal::{RawMode, TtySignals, window_size};
use super::{AttachArgs, ConnectArgs, JobsArgs};
use crate::client::exec::EXIT_CONNECTION;
use crate::client::{ExecClient, ExecReceiver, ExecSender, JobEvent};
use crate::config::DEFAULT_EXEC_PORT;
use crate::endpoint::Transport;
use crate::proto::jobs::{AttachRequest, JobInfo, JobState, KillRequest};
use crate::proto::{ClientMsg, ExecRequest};

/// Sends a detached `exec` and prints the job's ID on stdout; the exit
/// status: 0, or as `exec`'s for a refusal.
pub(super) async fn detach(tx: &mut ExecSender, rx: &mut ExecReceiver, req: ExecRequest) -> u8 {
    let id = req.id;
    let answer = async {
        tx.send(ClientMsg::Exec(req)).await?;
        rx.job_event(id).await
    };
    match answer.await {
        Ok(JobEvent::Started {
            detached: Some(job),
            ..
        }) => {
            println!("{job}");
            0
        }
        // Closing the connection now kills what it started.
        Ok(JobEvent::Started { detached: None, .. }) => {
            say!(
                "switchboard: the server does not keep detached jobs (it ran the job attached); \
                 it is killed as this client leaves"
            );
            EXIT_CONNECTION
        }
        Ok(JobEvent::Failed(f)) => {
            let status = f.exit_status.and_then(|s| u8::try_from(s).ok());
            say!("switchboard: {}", crate::client::ClientError::from(f));
            status.unwrap_or(EXIT_CONNECTION)
        }
        Ok(_) => {
            say!("switchboard: the server did not answer the request with started");
            EXIT_CONNECTION
        }
        Err(e) => {
            say!("switchboard: {e}");
            EXIT_CONNECTION
        }
    }
}

/// Connects to `addr` (127.0.0.1:8080 when none) as `exec` does, with
/// its windows; `Ok(Err(255))` once said why not.
fn connect(
    conn: &ConnectArgs,
    addr: Option<&str>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Result<ExecClient, u8>> {
    let default = format!("127.0.0.1:{DEFAULT_EXEC_PORT}");
    let target = Target::address(addr.unwrap_or(&default), DEFAULT_EXEC_PORT)?
        .speaking("exec", &[Transport::Tcp, Transport::Tls])?;
    let auth = crate::client::ClientAuth {
        window: true,
        output_window: Some(OUTPUT_WINDOW),
        ..conn.auth()?
    };
    let tls = match target.transport {
        Some(Transport::Tls) => Some(conn.client_tls(&target.addr)?),
        _ => None,
    };
    match rt.block_on(conn.connect(&target.addr, tls.as_ref(), &auth)) {
        Ok(c) => {
            if let Some(first) = c.first_use() {
                super::tell_first_use(&target.addr, first);
            }
            Ok(Ok(c))
        }
        Err(e) => {
            say!("switchboard: {e}");
            Ok(Err(EXIT_CONNECTION))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// `switchboard jobs`: the caller's detached jobs, or `--kill` each named.
pub fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = match connect(&args.conn, args.addr.as_deref(), &rt)? {
        Ok(c) => c,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let (mut tx, mut rx) = client.split();
    let mut ask = |msg: ClientMsg| {
        let id = msg.id().unwrap_or_default();
        rt.block_on(async {
            tx.send(msg).await?;
            rx.jobs_answer(id).await
        })
    };
    if args.kill.is_empty() {
        let jobs = match ask(ClientMsg::Jobs { id: 1 }) {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(f)) => {
                say!("switchboard: {}", crate::client::ClientError::from(f));
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
            Err(e) => {
                say!("switchboard: {e}");
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        };
        print_jobs(&jobs, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for (n, job) in args.kill.iter().enumerate() {
        let kill = ClientMsg::Kill(KillRequest {
            id: n as u64 + 1,
            detached: job.clone(),
        });
        match ask(kill) {
            Ok(Ok(jobs)) => {
                if args.json {
                    print_jobs(&jobs, true)?;
                }
                for j in &jobs {
                    let still = j.state == JobState::Running;
                    failed |= still;
                    if !args.json {
                        let how = match (j.forgotten, still) {
                            (true, _) => format!("forgotten (it had ended: {})", status_text(j)),
                            (false, true) => "still running after TERM and KILL".to_string(),
                            (false, false) => format!("stopped: {}", status_text(j)),
                        };
                        say!("switchboard: {}: {how}", j.detached);
                    }
                }
            }
            Ok(Err(f)) => {
                failed = true;
                say!(
                    "switchboard: {job}: {}",
                    crate::client::ClientError::from(f)
                );
            }
            Err(e) => {
                say!("switchboard: {e}");
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        }
    }
    Ok(ExitCode::from(u8::from(failed)))
}

/// How a job stands, in a few words: `running`, `exit 0`, `SIGTERM`,
/// `timed out (SIGTERM)`.
fn status_text(j: &JobInfo) -> String {
    match (j.state, j.code, &j.signal) {
        (JobState::Running, ..) => "running".into(),
        (JobState::Exited, Some(c), _) => format!("exit {c}"),
        (JobState::Exited, None, Some(s)) if j.timed_out => format!("timed out (SIG{s})"),
        (JobState::Exited, None, Some(s)) => format!("SIG{s}"),
        (JobState::Exited, None, None) => "ended".into(),
    }
}

/// The jobs as a table (IDs shortened to 12 characters, which `attach`
/// and `--kill` take), or one JSON record each.
fn print_jobs(jobs: &[JobInfo], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for j in jobs {
            writeln!(out, "{}", serde_json::to_string(j)?)?;
        }
        return Ok(());
    }
    if jobs.is_empty() {
        say!("switchboard: no detached jobs");
        return Ok(());
    }
    writeln!(
        out,
        "{:<12}  {:<20}  {:<20}  {:>10}  {:>10}  COMMAND",
        "ID", "STATE", "STARTED (UTC)", "BUFFERED", "LOST"
    )?;
    for j in jobs {
        let mut state = status_text(j);
        if j.attached {
            state.push_str(", attached");
        }
        // 2026-12-03T18:01:02.123456Z: to the second.
        let started = j.started.get(..19).unwrap_or(&j.started).replace('T', " ");
        writeln!(
            out,
            "{:<12}  {:<20}  {:<20}  {:>10}  {:>10}  {}",
            j.detached.get(..12).unwrap_or(&j.detached),
            state,
            started,
            j.buffered,
            j.lost,
            j.command
        )?;
    }
    Ok(())
}

/// `switchboard attach [ADDR] ID`.
pub fn attach(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let (addr, job) = match args.args.as_slice() {
        [job] => (None, job.clone()),
        [addr, job] => (Some(addr.as_str()), job.clone()),
        _ => bail!("give [ADDR] ID"),
    };
    let encoding = match &args.encoding {
        None => None,
        Some(label) => Some(
            Encoding::for_label(label.as_bytes())
                .with_context(|| format!("unknown encoding {label:?}"))?,
        ),
    };
    let rt = runtime()?;
    let client = match connect(&args.conn, addr, &rt)? {
        Ok(c) => c,
        Err(code) => return Ok(ExitCode::from(code)),
    };
    let stdin_window = client.stdin_window();
    let output_window = client.output_window().is_some();
    let (mut tx, mut rx) = client.split();
    let id = 1;
    let open = ClientMsg::Attach(AttachRequest {
        id,
        detached: job,
        timestamps: args.timestamps,
    });
    let answer = rt.block_on(async {
        tx.send(open).await?;
        rx.job_event(id).await
    });
    let info = match answer {
        Ok(JobEvent::Attached(info)) => info,
        Ok(JobEvent::Failed(f)) => {
            say!("switchboard: {}", crate::client::ClientError::from(f));
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
        Ok(_) => bail!("the server did not answer attach with attached"),
        Err(e) => {
            say!("switchboard: {e}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    if info.lost > 0 {
        say!(
            "switchboard: the job's first {} bytes of output fell out of its buffer (exec.detached_buffer) before this attach",
            info.lost
        );
    }
    // A job on a terminal gets this one, raw, at this one's size.
    let tty = info.tty && std::io::stdin().is_terminal() && !args.no_stdin;
    let mut signals = match tty {
        true => {
            let _runtime = rt.enter();
            Some(TtySignals::new().context("cannot listen for signals")?)
        }
        false => None,
    };
    let raw = match tty {
        true => {
            let (rows, cols) = window_size();
            let resize = ClientMsg::Resize { id, rows, cols };
            let _ = rt.block_on(tx.send(resize));
            RawMode::enter()
                .inspect_err(|e| say!("switchboard: cannot make the terminal raw: {e}"))
                .ok()
                .flatten()
        }
        false => None,
    };
    let input = LocalInput {
        forward: info.stdin && !args.no_stdin,
        window: stdin_window,
        output_window,
        escapes: raw.is_some(),
    };
    let mut out = Output::new(encoding, args.timestamps);
    let run = run_job(
        &mut tx,
        &mut rx,
        id,
        None,
        input,
        signals.as_mut(),
        &mut out,
    );
    let result = rt.block_on(run);
    drop(raw);
    let short = info.detached.get(..12).unwrap_or(&info.detached);
    let code = report(result, Some(short)).unwrap_or_else(|c| c);
    // A read of local stdin still blocked must not hold the exit.
    rt.shutdown_background();
    Ok(ExitCode::from(code))
}

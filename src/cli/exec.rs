//! `switchboard exec`: like `ssh host cmd`. Remote stdout and stderr go to
//! local stdout and stderr as they arrive, local stdin is forwarded unless
//! `-n`, Ctrl-C sends INT to the job (a second one within a second
//! disconnects), and the exit status is the job's (PROTOCOL.md §3.4).
//! With `-t` the job runs on a terminal of its own on the server, and the
//! local one is raw ([`super::terminal`]): keys, Ctrl-C included, go to the
//! job as bytes; window-size changes follow it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use encoding_rs::{Decoder, Encoding};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};

use super::ExecArgs;
use super::input::{Mode, Repl, Target};
use super::lines::{ClockOffset, StampedText};
use super::terminal::{ESCAPE_HELP, Escape, Escapes, RawMode, TtySignal, TtySignals, window_size};
use crate::client::exec::{EXIT_CONNECTION, exit_code};
use crate::client::{ClientAuth, ClientError, ExecReceiver, ExecSender, JobEvent};
use crate::config::DEFAULT_EXEC_PORT;
use crate::endpoint::Transport;
use crate::proto::message::{OUTPUT_FRAME_COST, STDIN_FRAME_COST, Stamp};
use crate::proto::{ClientMsg, ExitStatus, PtyRequest};

/// Turns remote bytes into what the terminal shows: untouched by default,
/// or decoded from a legacy encoding (the tutorial's GBK problem).
pub(super) struct Output {
    stdout: Option<Decoder>,
    stderr: Option<Decoder>,
    /// `--timestamps`: each line prefixed with its frame's time (cut on
    /// the raw bytes, then decoded).
    stamped: Option<[StampedText; 2]>,
}

impl Output {
    pub(super) fn new(encoding: Option<&'static Encoding>, timestamps: bool) -> Self {
        // Stamped output decodes in its own pieces (StampedText).
        let decoder = || encoding.filter(|_| !timestamps).map(|e| e.new_decoder());
        Output {
            stdout: decoder(),
            stderr: decoder(),
            stamped: timestamps.then(|| [StampedText::new(encoding), StampedText::new(encoding)]),
        }
    }

    /// Writes a chunk the server read at `ts`; `last`: the stream ended.
    fn write(
        &mut self,
        is_stderr: bool,
        data: &[u8],
        ts: Option<Stamp>,
        last: bool,
    ) -> std::io::Result<()> {
        let decoder = if is_stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let text;
        let stamped;
        let out: &[u8] = match (
            self.stamped
                .as_mut()
                .and_then(|l| l.get_mut(usize::from(is_stderr))),
            decoder,
        ) {
            (None, None) => data,
            (None, Some(d)) => {
                text = super::lines::decode(d, data, last);
                text.as_bytes()
            }
            (Some(lines), _) => {
                let mut s = Vec::with_capacity(data.len() + 64);
                // The rest of a cut line goes on after its first piece.
                lines.feed(data, ts, last, |p| {
                    if p.starts_line {
                        s.extend_from_slice(super::lines::prefix(p.ts).as_bytes());
                    }
                    s.extend_from_slice(p.bytes);
                });
                stamped = s;
                &stamped
            }
        };
        if is_stderr {
            let mut e = std::io::stderr().lock();
            e.write_all(out)?;
            e.flush()
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(out)?;
            o.flush()
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.write(false, b"", None, true)?;
        self.write(true, b"", None, true)
    }
}

/// Why a job did not end with an exit frame.
pub(super) enum Failure {
    Client(ClientError),
    Interrupted,
    /// The user typed the `~.` escape.
    Disconnected,
    /// The client got a signal that would have ended it (TERM, HUP when
    /// its terminal closed, ...) while its terminal was raw: it restores
    /// the terminal and leaves.
    Signalled(String),
    /// Our stdout or stderr is a pipe whose reader left (`exec -- yes |
    /// head`): end quietly with the status of a local process killed by
    /// SIGPIPE, as `yes` itself would.
    OutputClosed,
}

/// The output window `switchboard exec` gives each job: 1 MiB, enough for
/// the pipe's speed on loopback (BENCHMARKS.md), little to hold.
pub(super) const OUTPUT_WINDOW: u64 = 1 << 20;

/// What `exec -t` with no command runs: the login shell of the job's user
/// (`SHELL` comes from the password database, PROTOCOL.md §3.3).
const LOGIN_SHELL: &str = "exec \"${SHELL:-/bin/sh}\" -l";

/// Exit status of a process killed by SIGPIPE (128 + 13).
const EXIT_SIGPIPE: u8 = 141;

impl Failure {
    /// A failed write to our own stdout or stderr.
    fn output(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Client(ClientError::Io(e))
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// What a job gets of local stdin, and how its output is paced.
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalInput {
    /// Local stdin goes to the job.
    pub forward: bool,
    /// The job's stdin window, when the server keeps windows.
    pub window: Option<u64>,
    /// The server keeps to an output window: each output frame is given
    /// back once written here.
    pub output_window: bool,
    /// `~` escapes are read in it (a raw local terminal).
    pub escapes: bool,
}

/// How a job ended: its status, why the server ended it when it did so
/// for a reason of its own (shutdown, `--max-output-kill`), and the output
/// dropped past `--max-output`.
pub(super) type Ended = (ExitStatus, Option<String>, u64);

/// Runs job `id` to its end, streaming its output: the job `open` starts
/// (`exec`), or one already followed (`attach`, §3.10). Forwards local stdin when
/// `forward_stdin`, reading `~` escapes in it when `escapes` (a raw local
/// terminal). A job on a terminal follows the local window's size through
/// `tty` (handlers installed before the terminal went raw).
///
/// Reading the connection never waits on writing it: stdin and signals go
/// through a queue to their own writer, so a job that echoes its input
/// (`cat`) cannot deadlock the two directions against each other.
pub(super) async fn run_job(
    tx: &mut ExecSender,
    rx: &mut ExecReceiver,
    id: u64,
    open: Option<ClientMsg>,
    input: LocalInput,
    mut tty: Option<&mut TtySignals>,
    out: &mut Output,
) -> Result<Ended, Failure> {
    let sent = std::time::SystemTime::now();
    if let Some(open) = open {
        tx.send(open).await?;
    }
    let (queue, mut queued) = tokio::sync::mpsc::channel::<ClientMsg>(4);
    // A send that fails (the server closed its end: it is stopping, or
    // the connection is gone) ends nothing by itself: what the server sent
    // before, the job's exit among it, is still to be read, and reading
    // says how the connection ended. Frames queued after are dropped.
    // (Found by attack: a window grant that failed at the server's
    // shutdown lost the job's exit, "broken pipe".)
    let writer = async {
        let mut broken = false;
        while let Some(msg) = queued.recv().await {
            broken = broken || tx.send(msg).await.is_err();
        }
        std::future::pending::<Failure>().await
    };
    let stdin_queue = queue.clone();
    // With a stdin window (PROTOCOL.md §3.6), input is sent only as the
    // job takes it, so the server never has to stop reading the
    // connection: a Ctrl-C still reaches a job that does not read.
    let LocalInput {
        forward: forward_stdin,
        window,
        output_window,
        escapes,
    } = input;
    // With an output window, what was written here is given back, so that
    // the job's output comes only as fast as this terminal or pipe takes it.
    let taken = |len: usize| {
        output_window.then(|| ClientMsg::Window {
            id,
            output: len as u64 + OUTPUT_FRAME_COST,
        })
    };
    // A frame never costs more than the window (a server's window too
    // small for any frame would be ignored).
    let window = window.filter(|&w| w > 1024);
    let chunk = window.map_or(crate::proto::frame::CHUNK, |w| {
        usize::try_from(w - STDIN_FRAME_COST)
            .unwrap_or(crate::proto::frame::CHUNK)
            .min(crate::proto::frame::CHUNK)
    });
    let credit = window.map(|w| {
        std::sync::Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(w).unwrap_or(usize::MAX >> 4),
        ))
    });
    let stdin_credit = credit.clone();
    let feed_stdin = async move {
        if forward_stdin {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; chunk];
            let mut reader = escapes.then(Escapes::default);
            loop {
                let typed = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.get(..n).unwrap_or_default(),
                };
                let data = match &mut reader {
                    None => bytes::Bytes::copy_from_slice(typed),
                    Some(reader) => {
                        let mut send = Vec::with_capacity(typed.len());
                        match reader.feed(typed, &mut send) {
                            Some(Escape::Disconnect) => return Failure::Disconnected,
                            Some(Escape::Help) => {
                                let _ = std::io::stderr().write_all(ESCAPE_HELP.as_bytes());
                            }
                            None => {}
                        }
                        bytes::Bytes::from(send)
                    }
                };
                if data.is_empty() {
                    continue;
                }
                if let Some(credit) = &stdin_credit {
                    let cost = data.len() as u64 + STDIN_FRAME_COST;
                    match credit
                        .acquire_many(u32::try_from(cost).unwrap_or(u32::MAX))
                        .await
                    {
                        Ok(permits) => permits.forget(),
                        Err(_) => break,
                    }
                }
                if stdin_queue
                    .send(ClientMsg::Stdin { id, data })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = stdin_queue.send(ClientMsg::Eof { id }).await;
        }
        std::future::pending::<Failure>().await
    };
    let receive = async {
        let mut sigint = signal(SignalKind::interrupt()).map_err(ClientError::Io)?;
        let mut last_int: Option<Instant> = None;
        loop {
            tokio::select! {
                ev = rx.job_event(id) => match ev? {
                    JobEvent::Started { ts, .. } => if let Some(ts) = ts {
                        let clock = ClockOffset::measure(sent, ts, std::time::SystemTime::now());
                        say!("switchboard: {}", clock.describe());
                    },
                    JobEvent::Transfer(_) | JobEvent::Jobs { .. } | JobEvent::Attached(_) => {}
                    JobEvent::Window { stdin } => if let Some(c) = &credit {
                        c.add_permits(usize::try_from(stdin).unwrap_or(0));
                    },
                    JobEvent::Stdout(data, ts) => {
                        out.write(false, &data, ts, false).map_err(Failure::output)?;
                        if let Some(msg) = taken(data.len()) {
                            let _ = queue.send(msg).await;
                        }
                    }
                    JobEvent::Stderr(data, ts) => {
                        out.write(true, &data, ts, false).map_err(Failure::output)?;
                        if let Some(msg) = taken(data.len()) {
                            let _ = queue.send(msg).await;
                        }
                    }
                    JobEvent::Exit { status, reason, dropped } => {
                        out.finish().map_err(Failure::output)?;
                        return Ok((status, reason, dropped));
                    }
                    JobEvent::Failed(f) => return Err(ClientError::from(f).into()),
                },
                sig = tty_signal(&mut tty) => match sig {
                    TtySignal::Resized => {
                        let (rows, cols) = window_size();
                        let _ = queue.send(ClientMsg::Resize { id, rows, cols }).await;
                    }
                    TtySignal::Fatal(name) => return Err(Failure::Signalled(name)),
                },
                _ = sigint.recv() => {
                    if last_int.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                        return Err(Failure::Interrupted);
                    }
                    last_int = Some(Instant::now());
                    let _ = queue.send(ClientMsg::Signal { id, signal: "INT".into() }).await;
                }
            }
        }
    };
    tokio::select! {
        r = receive => r,
        f = writer => Err(f),
        f = feed_stdin => Err(f),
    }
}

/// A terminal like the local one for the job: its size, and `term`.
fn terminal_request(term: &Option<String>) -> PtyRequest {
    let (rows, cols) = window_size();
    PtyRequest {
        rows,
        cols,
        term: term.clone(),
    }
}

/// The next signal for a job on a terminal; never, for one without.
async fn tty_signal(tty: &mut Option<&mut TtySignals>) -> TtySignal {
    match tty {
        Some(t) => t.next().await,
        None => std::future::pending().await,
    }
}

/// Tells how a job ended and gives its exit status: `Ok` to go on with the
/// next command (REPL, pipe), `Err` to stop (the connection is gone).
/// `detached`: the job is a detached one this client attached to, which
/// leaving does not end.
pub(super) fn report(result: Result<Ended, Failure>, detached: Option<&str>) -> Result<u8, u8> {
    let left = |how: &str| match detached {
        Some(id) => say!("switchboard: {how}; the job runs on (switchboard attach {id})"),
        None => say!("switchboard: {how}; the job is killed with the connection"),
    };
    match result {
        Ok((status, reason, dropped)) => {
            match (dropped, detached) {
                (0, _) => {}
                (_, None) => say!(
                    "switchboard: output truncated: {dropped} bytes past the job's max_output dropped"
                ),
                // An attachment also misses what fell out of the job's
                // buffer while it lagged.
                (_, Some(_)) => say!(
                    "switchboard: output truncated: {dropped} bytes not received (past the job's \
                     max_output, or out of its buffer while this client lagged)"
                ),
            }
            if let Some(why) = reason {
                say!("switchboard: job ended: {why}");
            }
            if let ExitStatus::Signal { name, timed_out } = &status {
                let why = if *timed_out {
                    "timed out; killed by"
                } else {
                    "killed by"
                };
                say!("switchboard: job {why} SIG{name}");
            }
            Ok(exit_code(&status))
        }
        Err(Failure::Interrupted) => {
            left("interrupted; disconnecting");
            Err(130)
        }
        Err(Failure::Disconnected) => {
            left("disconnected (~.)");
            Err(EXIT_CONNECTION)
        }
        Err(Failure::Signalled(name)) => {
            say!("switchboard: got SIG{name}; disconnecting");
            Err(EXIT_CONNECTION)
        }
        // Disconnecting ends the job, as SIGPIPE would end a local one.
        Err(Failure::OutputClosed) => Err(EXIT_SIGPIPE),
        // (§3.10) Another client attached to the job this one followed.
        Err(Failure::Client(ClientError::Job {
            code: crate::proto::ErrorCode::Detached,
            message,
            ..
        })) => {
            say!("switchboard: {message}");
            Err(EXIT_CONNECTION)
        }
        Err(Failure::Client(e @ ClientError::Job { .. })) => {
            say!("switchboard: {e}");
            // A program that could not be run exits as a shell says (127
            // not found, 126 not executable), other refusals 255.
            let ClientError::Job { exit_status, .. } = e else {
                return Ok(EXIT_CONNECTION);
            };
            Ok(exit_status
                .and_then(|s| u8::try_from(s).ok())
                .unwrap_or(EXIT_CONNECTION))
        }
        Err(Failure::Client(e)) => {
            say!("switchboard: {e}");
            Err(EXIT_CONNECTION)
        }
    }
}

/// Runs the command the words make (local stdin forwarded, as ssh does,
/// unless `no_stdin`), a REPL's commands one job each, or, with no command
/// and stdin a pipe or file, `script` (a shell reading stdin: the whole
/// input is one script, as `ssh host < script.sh` runs it). `run` gets the
/// words and whether local stdin goes to the job. The exit status: the
/// job's, or the REPL's last, or the first that ended the connection.
fn each_command(
    words: Vec<String>,
    no_stdin: bool,
    script: Vec<String>,
    mut run: impl FnMut(Vec<String>, bool) -> Result<u8, u8>,
) -> anyhow::Result<u8> {
    Ok(match Mode::pick(&words) {
        Mode::Once(_) => run(words, !no_stdin).unwrap_or_else(|c| c),
        Mode::Repl => {
            let mut repl = Repl::new("exec", "exec> ")?;
            let mut last = 0;
            while let Some(line) = repl.next_line() {
                match run(vec![line], false) {
                    Ok(0) => last = 0,
                    Ok(c) => {
                        say!("[exit {c}]");
                        last = c;
                    }
                    Err(c) => return Ok(c),
                }
            }
            last
        }
        Mode::Pipe if no_stdin => anyhow::bail!(
            "-n with no command: the piped script would not be read; give a command after --"
        ),
        Mode::Pipe => run(script, true).unwrap_or_else(|c| c),
    })
}

pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    // The word before `--` is the address, never a command: a host name
    // taken for a command once ran `web01` on the default server.
    let target = match args.addr.as_slice() {
        [] => Target::address(&format!("127.0.0.1:{DEFAULT_EXEC_PORT}"), DEFAULT_EXEC_PORT)?,
        [addr] if args.fan.hosts.is_some() => {
            bail!("{addr:?}: give either an address or --hosts, not both")
        }
        [addr] => Target::address(addr, DEFAULT_EXEC_PORT)?,
        [_, second, ..] => bail!(
            "{second:?}: one address comes before --, the command after it: \
             switchboard exec [ADDR] -- CMD [ARGS...]"
        ),
    }
    .speaking("exec", &[Transport::Tcp, Transport::Tls])?;
    let encoding = match &args.encoding {
        None => None,
        Some(label) => Some(
            Encoding::for_label(label.as_bytes())
                .with_context(|| format!("unknown encoding {label:?}"))?,
        ),
    };
    super::request::parse_env(&args.env)?;
    if args.fan.hosts.is_none() && (args.json || args.gather || args.max_rc) {
        bail!("--json, --gather and --max-rc are for fan-out: add --hosts HOSTS");
    }
    // Every address is checked before anything else can fail or connect.
    let hosts = args.fan.expand()?;
    // -t: a terminal for the job when local stdin is one, or always with
    // -tt, as ssh decides; it carries the local TERM if that is a name.
    let tty = match args.tty {
        0 => None,
        1 if !std::io::stdin().is_terminal() => {
            say!("switchboard: no terminal for the job: stdin is not a terminal (-tt forces one)");
            None
        }
        _ => Some(
            std::env::var("TERM")
                .ok()
                .filter(|t| PtyRequest::check_term(t)),
        ),
    };
    // On a terminal, no command is an interactive login shell (not the
    // REPL): the job user's own shell, as ssh gives.
    let words = match (&tty, args.command.is_empty()) {
        (Some(_), true) if args.argv => bail!("-t with --argv needs a command after --"),
        (Some(_), true) => vec![LOGIN_SHELL.to_string()],
        _ => args.command.clone(),
    };
    if args.detach && words.is_empty() {
        bail!("--detach needs a command after -- (or -t, for a login shell to attach to later)");
    }
    let auth = args.conn.auth()?;
    if let Some(hosts) = hosts {
        let words = args.command.clone();
        return super::fanout::fanout(args, hosts, words, auth, encoding);
    }
    // One job at a time, its stdin paced by its window, so a job that
    // does not read cannot hold up the Ctrl-C meant for it.
    let auth = ClientAuth {
        window: true,
        output_window: Some(OUTPUT_WINDOW),
        ..auth
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let tls = match target.transport {
        Some(Transport::Tls) => Some(args.conn.client_tls(&target.addr)?),
        _ => None,
    };
    let connect = args.conn.connect(&target.addr, tls.as_ref(), &auth);
    let client = match rt.block_on(connect) {
        Ok(c) => c,
        Err(e) => {
            say!("switchboard: {e}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
    };
    if let Some(first) = client.first_use() {
        super::tell_first_use(&target.addr, first);
    }
    let stdin_window = client.stdin_window();
    let output_window = client.output_window().is_some();
    let (mut tx, mut rx) = client.split();
    if args.detach {
        let mut req = args.request(1, words);
        // On a terminal, it keeps its input open for whoever attaches.
        if let Some(term) = &tty {
            req.pty = Some(terminal_request(term));
            req.stdin = true;
        }
        let code = rt.block_on(super::jobs::detach(&mut tx, &mut rx, req));
        return Ok(ExitCode::from(code));
    }
    let mut next_id = 0u64;
    let mut out = Output::new(encoding, args.timestamps);
    // Listened for before the terminal goes raw, so that no signal in
    // between ends the client by its default action with the terminal raw.
    let mut tty_signals = match &tty {
        Some(_) => {
            let _runtime = rt.enter();
            Some(TtySignals::new().context("cannot listen for signals")?)
        }
        None => None,
    };
    let run = |words: Vec<String>, forward: bool| {
        next_id += 1;
        let mut req = args.request(next_id, words);
        req.stdin = forward;
        let mut raw = None;
        if let Some(term) = &tty {
            req.pty = Some(terminal_request(term));
            raw = RawMode::enter()
                .inspect_err(|e| say!("switchboard: cannot make the terminal raw: {e}"))
                .ok()
                .flatten();
        }
        let escapes = raw.is_some();
        let signals = tty_signals.as_mut();
        let input = LocalInput {
            forward,
            window: stdin_window,
            output_window,
            escapes,
        };
        let id = req.id;
        let job = run_job(
            &mut tx,
            &mut rx,
            id,
            Some(ClientMsg::Exec(req)),
            input,
            signals,
            &mut out,
        );
        let result = rt.block_on(job);
        // Restored before anything is said about the job.
        drop(raw);
        report(result, None)
    };
    // The shell that reads a piped script, as argv or as a command line.
    let script = if args.argv {
        vec!["/bin/sh".to_string(), "-s".to_string()]
    } else {
        vec!["exec /bin/sh -s".to_string()]
    };
    let code = each_command(words, args.no_stdin, script, run)?;
    // A read of local stdin still blocked (a terminal nobody types in, a
    // pipe whose writer lingers) must not hold the exit once the job is
    // over, as it would if the runtime waited for it.
    rt.shutdown_background();
    Ok(ExitCode::from(code))
}

//! The command line: argument structs, and the client-side UX.
//!
//! One rule for every client: arguments given, run once; none and a TTY, a
//! REPL (history, empty lines skipped, `quit`/`exit`/Ctrl-D leave); none and
//! a pipe, one request per input line.

/// `eprintln!` that cannot panic: a message for a stderr that is gone (a
/// closed pipe, a full disk) is dropped, as the server's log drops it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod clients;
mod exec;
mod fanout;
mod input;
mod jobs;
mod lines;
mod relay;
mod request;
mod serve;
mod terminal;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{EchoMode, parse_duration};

/// A wait of the clients' (`--timeout`, `--connect-timeout`): a duration,
/// 0 meaning no limit, as 0 means none for the server's `exec.job_timeout`
/// and for `timeout(1)`. No limit is a wait no one will see end.
fn parse_wait(s: &str) -> anyhow::Result<Duration> {
    let d = parse_duration(s)?;
    Ok(if d.is_zero() { NO_LIMIT } else { d })
}

/// A size in bytes: a number, or with K, M or G (powers of 1,024; `KiB`,
/// `MB` and the like read the same).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a size is a number of bytes, or with K, M or G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{s:?}: a size's unit is K, M or G")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// What a wait of 0 becomes: about thirty years.
pub const NO_LIMIT: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "The socket tutorial's services done properly: upper-case echo (TCP/UDP), UDP time and remote command execution, with their clients.",
    after_help = "Examples:\n  switchboard serve\n  switchboard echo linhaifeng nb\n  switchboard time %H:%M:%S\n  switchboard exec -- uname -a\n  switchboard exec --hosts 'node[01-20]:8080' --gather -- uptime\n  switchboard bench echo --conns 100"
)]
pub struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Logging")]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Logging"
    )]
    pub quiet: bool,
    /// Log lines as text or as JSON objects (one per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
// The arguments of one command, parsed once: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the services (echo on 127.0.0.1:9000 TCP+UDP, time on 127.0.0.1:9001 UDP, exec on 127.0.0.1:8080).
    #[command(
        after_help = "Examples:\n  switchboard serve\n  switchboard serve --echo tcp://0.0.0.0:9000 --time udp://[::1]:9001 --utc\n  switchboard serve --config switchboard.toml\n  switchboard serve --echo tcp://127.0.0.1:0   # any free port; the banner says which"
    )]
    Serve(ServeArgs),
    /// Upper-case echo client: one-shot with TEXT, a REPL on a TTY, line by line from a pipe.
    #[command(
        after_help = "Examples:\n  switchboard echo linhaifeng nb\n  switchboard echo --udp 127.0.0.1:9000 hello\n  cat notes.txt | switchboard echo\n  switchboard echo            # REPL"
    )]
    Echo(EchoArgs),
    /// UDP time client: prints the server's time in a strftime FORMAT.
    #[command(
        after_help = "Examples:\n  switchboard time '%Y-%m-%d %H:%M:%S'\n  switchboard time 127.0.0.1:9001 ''   # the server's default format\n  printf '%%F\\n%%T\\n' | switchboard time"
    )]
    Time(TimeArgs),
    /// Run a command on a switchboard server, like `ssh host cmd`; a REPL without CMD.
    #[command(
        after_help = "Examples:\n  switchboard exec -- uname -a\n  switchboard exec 127.0.0.1:8080 -- sh -c 'exit 7'; echo $?   # 7\n  tar c dir | switchboard exec -- tar x -C /tmp/x\n  switchboard exec --argv -- printf '%s\\n' 'one arg'\n  switchboard exec --encoding gbk -- cat gbk.txt\n  switchboard exec                    # REPL, one command a line\n\nExit status: the job's code; 128+N if killed by signal N; 124 if it timed out;\n255 if the connection, the handshake or the protocol failed."
    )]
    Exec(ExecArgs),
    /// List your detached jobs on a server (exec --detach), or stop them.
    #[command(
        after_help = "Examples:\n  switchboard jobs\n  switchboard jobs web1:8080 --json\n  switchboard jobs --kill 3f9a1c2b   # stop it; a job that ended is forgotten\n\nIDs may be shortened to any 4 or more leading characters that only one of your jobs has.\nEach identity (key, certificate principal, or token) sees only its own jobs.\n\nExit status: 0; 1 if a --kill failed; 255 if the connection failed."
    )]
    Jobs(JobsArgs),
    /// Follow a detached job: its buffered output, then live output; stdin and Ctrl-C go to it.
    #[command(
        after_help = "Examples:\n  switchboard attach 3f9a1c2b\n  switchboard attach tls://web1:8443 3f9a --timestamps\n\nA second Ctrl-C within a second (or ~. on a terminal) detaches again: the job runs on.\nAttaching takes the job over from a client attached before.\n\nExit status: the job's, as for exec, once it ends; 130 when detached by Ctrl-C;\n255 when detached by ~., if the connection failed, or another client took the job over."
    )]
    Attach(AttachArgs),
    /// Copy files to a switchboard server, as scp: verified by SHA-256, never a partial file under the final name.
    #[command(
        after_help = "Examples:\n  switchboard put notes.txt /tmp/               # to 127.0.0.1:8080\n  switchboard put tls://web1:8443 app.tar.gz /srv/releases/\n  switchboard put -rp site/ web1:8080 /var/www   # a tree, modes and times kept\n  switchboard put --resume big.iso /data/        # go on after an interruption\n\nThe address comes first when given (then at least SRC and DEST follow).\nA DEST that is an existing directory receives the files inside it; a DEST\nending in / must be one; several SRCs need one. A file never replaces a\ndirectory, nor a directory a file.\n\nExit status: 0 all copied; 1 some failed (each said); 255 the connection failed."
    )]
    Put(TransferArgs),
    /// Copy files from a switchboard server, as scp: verified by SHA-256, never a partial file under the final name.
    #[command(
        after_help = "Examples:\n  switchboard get /etc/os-release .\n  switchboard get web1:8080 /var/log/syslog /var/log/auth.log logs/\n  switchboard get -r web1:8080 /etc/nginx ./nginx-web1\n\nSame address and destination rules as put.\n\nExit status: 0 all copied; 1 some failed (each said); 255 the connection failed."
    )]
    Get(TransferArgs),
    /// Make an Ed25519 key pair in OpenSSH's formats, as ssh-keygen -t ed25519.
    #[command(
        after_help = "Examples:\n  switchboard keygen                       # ~/.config/switchboard/id_ed25519\n  switchboard keygen -f deploy_key -C 'deploy@ci' -N ''\n\nThe private key is written 0600, the public one (FILE.pub) 0644; the public line\nprinted goes in a server's authorized_keys (see `switchboard serve --auth key`)."
    )]
    Keygen(KeygenArgs),
    /// Load generator: request/response load with every reply checked.
    #[command(
        after_help = "Examples:\n  switchboard bench echo --conns 1000 --duration 10s\n  switchboard bench udp-echo 127.0.0.1:9000 --conns 16 --size 32 --json\n  switchboard bench echo --server-pid $(pgrep -n switchboard)"
    )]
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  switchboard completions bash > /etc/bash_completion.d/switchboard\n  switchboard completions zsh > ~/.zfunc/_switchboard"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per subcommand with --dir.
    #[command(
        after_help = "Examples:\n  switchboard man > /usr/local/share/man/man1/switchboard.1\n  switchboard man | man -l -\n  switchboard man --dir /usr/local/share/man/man1   # switchboard.1, switchboard-exec.1, ..."
    )]
    Man {
        /// Write switchboard.1 and a page per subcommand (switchboard-exec.1, ...) here.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The private key's file; the public key goes to FILE.pub
    /// [default: ~/.config/switchboard/id_ed25519].
    #[arg(short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The comment, which a server's authorized_keys makes the key's name [default: USER@HOST].
    #[arg(short = 'C', value_name = "COMMENT")]
    pub comment: Option<String>,
    /// The passphrase ('' for none) [default: asked on the terminal; none without one].
    #[arg(short = 'N', value_name = "PASSPHRASE")]
    pub passphrase: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Copy directories and what they hold (links copied as links, never
    /// followed; special files skipped with a warning).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Keep permission bits and modification times (else: the source's
    /// bits minus the receiver's umask, and the time of the copy).
    #[arg(short = 'p', long)]
    pub preserve: bool,
    /// Continue interrupted transfers from what both sides hash the same.
    #[arg(long)]
    pub resume: bool,
    /// One JSON record per file on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fan: HostsArgs,
    /// get --hosts: name each fetched file DEST/TEMPLATE instead of
    /// DEST/<host>/<name> ({host} and {name} are replaced), e.g. '{host}.{name}'.
    #[arg(long = "name", value_name = "TEMPLATE", requires = "hosts")]
    pub name_template: Option<String>,
    /// put --hosts: send the file once; each host stores it and passes it
    /// on to the next as it arrives (a chain; hosts that fail are passed
    /// over). One regular file, plain TCP hosts.
    #[arg(long, requires = "hosts")]
    pub relay: bool,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// [ADDR] SRC... DEST: the server's address first when given.
    #[arg(value_name = "ARGS", required = true)]
    pub args: Vec<String>,
}

/// Many servers at once (`exec`, `put`, `get`): which, and how many at a
/// time.
#[derive(Debug, Clone, Args)]
pub struct HostsArgs {
    /// Run on many servers: a comma list, ranges (node[01-20]:8080) or @file
    /// (no ADDR then; get writes DEST/<host>/<name>).
    #[arg(long, value_name = "HOSTS")]
    pub hosts: Option<String>,
    /// With --hosts: leave these out (same syntax: node[05-07], @file).
    #[arg(long, value_name = "HOSTS", requires = "hosts")]
    pub exclude: Option<String>,
    /// With --hosts: how many servers at once.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..), |n| n as usize))]
    pub fanout: usize,
    /// With --hosts: run on the first N hosts first, and on the rest only if all of
    /// them succeed.
    #[arg(
        long,
        value_name = "N",
        requires = "hosts",
        conflicts_with = "canary_hosts"
    )]
    pub canary: Option<usize>,
    /// With --hosts: these hosts (of --hosts; same syntax) are the canary.
    #[arg(long, value_name = "HOSTS", requires = "hosts")]
    pub canary_hosts: Option<String>,
    /// With --hosts: run in waves of N hosts, or P% of them (25%), each after the
    /// one before has ended.
    #[arg(long, value_name = "N|P%", requires = "hosts")]
    pub batch: Option<crate::rollout::Count>,
    /// With --hosts: once more than N hosts (or P% of them) failed, start no more
    /// (running ones finish; the rest are reported skipped).
    #[arg(
        long,
        value_name = "N|P%",
        requires = "hosts",
        conflicts_with = "stop_on_fail"
    )]
    pub max_fail: Option<crate::rollout::Count>,
    /// With --hosts: start no more hosts after the first failure (--max-fail 0).
    #[arg(long, requires = "hosts")]
    pub stop_on_fail: bool,
}

impl HostsArgs {
    /// How the fan-out rolls over the hosts (`--canary`, `--batch`,
    /// `--max-fail`).
    pub(super) fn rollout(&self) -> anyhow::Result<crate::rollout::Rollout> {
        use crate::rollout::{Canary, Count, Rollout};
        let canary = match (&self.canary, &self.canary_hosts) {
            (Some(n), _) => Canary::First(*n),
            (None, Some(spec)) => Canary::Hosts(crate::hosts::expand(
                spec,
                crate::config::DEFAULT_EXEC_PORT,
            )?),
            (None, None) => Canary::None,
        };
        let max_fail = match self.stop_on_fail {
            true => Some(Count::Hosts(0)),
            false => self.max_fail,
        };
        Ok(Rollout {
            canary,
            batch: self.batch,
            max_fail,
        })
    }

    /// The hosts `--hosts` names, less `--exclude`; every address checked
    /// before anything can connect. `None` without `--hosts`.
    pub(super) fn expand(&self) -> anyhow::Result<Option<Vec<String>>> {
        let port = crate::config::DEFAULT_EXEC_PORT;
        let Some(spec) = &self.hosts else {
            return Ok(None);
        };
        let hosts = crate::hosts::expand(spec, port)?;
        Ok(Some(match &self.exclude {
            None => hosts,
            Some(ex) => crate::hosts::exclude(hosts, ex, port)?,
        }))
    }
}

/// How an exec client reaches and logs in to a server: `exec`, `put` and
/// `get` alike.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Token file [default: $SWITCHBOARD_TOKEN, else ~/.config/switchboard/token].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Key to log in with, for servers that take keys (a FILE-cert.pub beside it is
    /// presented too) [default: ~/.config/switchboard/id_ed25519, ~/.ssh/id_ed25519,
    /// else the agent's first Ed25519 key].
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Accept a server that runs without authentication.
    #[arg(long)]
    pub no_auth: bool,
    /// tls:// servers: trust certificates from this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// tls:// servers: trust exactly the certificate with this SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    pub tls_fingerprint: Option<String>,
    /// tls:// servers without --tls-ca/--tls-fingerprint, and tcp:// servers' host keys: trust
    /// on first use, remembered here [default: ~/.config/switchboard/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Time allowed for the connection and the handshake (0: no limit).
    #[arg(long, default_value = "10s", value_parser = parse_wait)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Kill the job (TERM, then KILL) after this long, e.g. 30s; exit status 124
    /// (0: none of the client's; the server's exec.job_timeout, none unless set, holds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Set an environment variable for the job, repeatable: --env K=V.
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of the job.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Run CMD ARGS directly, without a shell.
    #[arg(long)]
    pub argv: bool,
    /// Do not send local stdin to the job (it reads /dev/null), as ssh -n.
    #[arg(short = 'n', long = "no-stdin")]
    pub no_stdin: bool,
    /// Run the job on a terminal of its own, as ssh -t: for full-screen programs,
    /// sudo, shells (no CMD: your login shell). Keys go to the job raw (Ctrl-C
    /// too); ~. after Enter disconnects. -tt: even when stdin is not a terminal.
    #[arg(short = 't', action = clap::ArgAction::Count, conflicts_with_all = ["no_stdin", "hosts"])]
    pub tty: u8,
    /// Decode remote output from this encoding (gbk, shift_jis, ...); bytes pass untouched otherwise.
    #[arg(long, value_name = "LABEL")]
    pub encoding: Option<String>,
    #[command(flatten)]
    pub conn: ConnectArgs,
    #[command(flatten)]
    pub fan: HostsArgs,
    /// With --hosts: group identical outputs with the hosts that produced them.
    #[arg(long)]
    pub gather: bool,
    /// With --hosts: one JSON record per host.
    #[arg(long)]
    pub json: bool,
    /// With --hosts: exit with the largest status instead of 1 on any failure.
    #[arg(long)]
    pub max_rc: bool,
    /// Output the job may send, stdout and stderr together (bytes, or 64K, 10M); the server
    /// drops the rest and says how much, and the job runs on. With --hosts and
    /// --gather/--json it is also what is kept per host [default there: 1M, or 64M over
    /// all hosts past 64 of them].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output: Option<u64>,
    /// With --max-output: stop the job (TERM, then KILL) once it is reached.
    #[arg(long, requires = "max_output")]
    pub max_output_kill: bool,
    /// Start the job detached and print its ID (with --hosts: `host: ID` lines, or each
    /// record's `detached`): it runs on after the client leaves, its output kept on the
    /// server (see `switchboard jobs` and `switchboard attach`). Its stdin is closed,
    /// unless -t gives it a terminal to attach to.
    #[arg(long, conflicts_with_all = ["timestamps"])]
    pub detach: bool,
    /// Prefix each output line with the server's time of it (RFC 3339, microseconds, UTC),
    /// and say once per host how far the server's clock is from this one.
    #[arg(long, conflicts_with_all = ["tty", "gather"])]
    pub timestamps: bool,
    /// The server: HOST[:PORT], tcp://HOST[:PORT] or tls://HOST[:PORT], IPv6 in
    /// brackets (default 127.0.0.1:8080; a missing port is 8080). Always the
    /// word before --.
    #[arg(value_name = "ADDR")]
    pub addr: Vec<String>,
    /// The command, after --: one word is a shell command line, several are
    /// quoted word by word. None: a REPL on a terminal (a job per line); from a pipe or
    /// file, the input is one shell script, one job, as `ssh host < script.sh` runs it.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Stop this job (TERM, then KILL after the server's grace) and say how it ended;
    /// a job that has ended is forgotten instead. Repeatable.
    #[arg(long, value_name = "ID")]
    pub kill: Vec<String>,
    /// One JSON record per job.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The server, as for exec (default 127.0.0.1:8080).
    #[arg(value_name = "ADDR")]
    pub addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Prefix each output line with the server's time of it, as exec --timestamps.
    #[arg(long)]
    pub timestamps: bool,
    /// Do not send local stdin to the job.
    #[arg(short = 'n', long = "no-stdin")]
    pub no_stdin: bool,
    /// Decode the job's output from this encoding (gbk, shift_jis, ...).
    #[arg(long, value_name = "LABEL")]
    pub encoding: Option<String>,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// [ADDR] ID: the server (as for exec; default 127.0.0.1:8080), then the job's ID
    /// or 4 or more of its leading characters.
    #[arg(value_name = "ARGS", required = true, num_args = 1..=2)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// echo, udp-echo, udp-time, stream, connect, idle, exec, exec-connect or exec-stream.
    #[arg(value_enum)]
    pub mode: crate::bench::Mode,
    /// Target HOST:PORT [default: 127.0.0.1:9000; :9001 for udp-time; :8080 for exec modes].
    pub addr: Option<String>,
    /// Connections (TCP) or sockets (UDP), each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// Request size in bytes (echo modes) [default: 64]; write size for stream [default: 65536].
    #[arg(long)]
    pub size: Option<usize>,
    /// How long to run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many requests in all (0 = no limit but the duration).
    #[arg(long, default_value_t = 0)]
    pub requests: u64,
    /// Per-request timeout (0: no limit).
    #[arg(long, default_value = "2s", value_parser = parse_wait)]
    pub timeout: Duration,
    /// Read this server process's memory (VmRSS) before and after.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the result as one JSON line.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the result as CSV: a header line and a line of values (the
    /// JSON fields that are numbers or text; error causes left out).
    #[arg(long)]
    pub csv: bool,
    /// exec: jobs in flight per connection.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub inflight: usize,
    /// exec: the shell command each job runs.
    #[arg(long, default_value = "true")]
    pub cmd: String,
    /// stream: bytes to send; exec-stream: bytes the job writes.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// exec modes: token file [default: $SWITCHBOARD_TOKEN, else ~/.config/switchboard/token].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// exec modes: log in with this key instead of the token (the server's host
    /// key is taken as it comes: this is a load generator, not a client to trust).
    #[arg(
        short = 'i',
        long = "identity",
        value_name = "FILE",
        conflicts_with = "no_auth"
    )]
    pub identity: Option<PathBuf>,
    /// exec modes: connect to a server without authentication.
    #[arg(long)]
    pub no_auth: bool,
    /// exec-connect: handshakes in progress at once, at most (the server
    /// closes a source's handshakes past exec.max_unauthenticated_per_source).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..), |n| n as usize))]
    pub handshakes: usize,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file and flags) and exit: 0 if valid.
    #[arg(long)]
    pub check_config: bool,
    /// Echo endpoint, repeatable: tcp://HOST:PORT, udp://HOST:PORT, or HOST:PORT for
    /// both (one port, port 0 included); `none`: no echo service.
    #[arg(long = "echo", value_name = "ENDPOINT")]
    pub echo: Vec<String>,
    /// Time endpoint, repeatable: udp://HOST:PORT or HOST:PORT; `none`: no time service.
    #[arg(long = "time", value_name = "ENDPOINT")]
    pub time: Vec<String>,
    /// Echo replies upper-cased (the tutorial) or unchanged (RFC 862).
    #[arg(long, value_enum)]
    pub echo_mode: Option<EchoMode>,
    /// Time replies in UTC instead of local time.
    #[arg(long)]
    pub utc: bool,
    #[arg(long, value_name = "N", help = with_default("Simultaneous TCP echo connections", defaults().echo.max_connections))]
    pub max_connections: Option<usize>,
    #[arg(long, value_name = "N", help = with_default("Simultaneous TCP echo connections from one source address; 0 = no limit", defaults().echo.max_connections_per_source))]
    pub max_connections_per_source: Option<usize>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help = with_default("Close echo connections idle this long, e.g. 300s, 5m", humantime::format_duration(defaults().echo.idle_timeout)))]
    pub idle_timeout: Option<Duration>,
    #[arg(long, value_name = "BYTES", help = with_default("Longest time reply in bytes, 64-65507", defaults().time.reply_cap))]
    pub time_reply_cap: Option<usize>,
    #[arg(long, value_name = "N", help = with_default("UDP datagrams answered per second per source IP; 0 = unlimited", defaults().udp.rate_limit))]
    pub udp_rate_limit: Option<u32>,
    /// Native exec endpoint, repeatable: tcp://HOST:PORT or tls://HOST:PORT; `none`: no exec
    /// service [default: tcp://127.0.0.1:8080].
    #[arg(long = "exec", value_name = "ENDPOINT")]
    pub exec: Vec<String>,
    /// Tutorial-compatible exec endpoint (loopback only; off by default).
    #[arg(long = "exec-legacy", value_name = "ENDPOINT")]
    pub exec_legacy: Vec<String>,
    /// Run exec without authentication (loopback endpoints only).
    #[arg(long)]
    pub no_auth: bool,
    /// PEM certificate chain for tls:// exec endpoints.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for tls:// exec endpoints.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Create (once) and keep a self-signed certificate for tls:// endpoints; prints its fingerprint.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Allow plaintext tcp:// exec on a non-loopback address.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Run exec jobs as this user (the server must be root).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Let exec jobs run as root when the server is root (refused otherwise).
    #[arg(long)]
    pub allow_root: bool,
    /// Refuse shell command lines; exec jobs must send argv.
    #[arg(long)]
    pub argv_only: bool,
    /// Only these programs may be run (argv[0] as written: a bare name, looked up in the server's PATH, or an absolute path), repeatable; implies --argv-only.
    #[arg(long = "allow-program", value_name = "PROG")]
    pub allow_program: Vec<String>,
    /// Refuse requests that set environment variables.
    #[arg(long)]
    pub forbid_env: bool,
    /// Environment variable names requests may set (`*`/`?` wildcards), repeatable; with --allow-program, the only ones [default: none].
    #[arg(long = "accept-env", value_name = "NAME")]
    pub accept_env: Vec<String>,
    /// Refuse requests that set a working directory.
    #[arg(long)]
    pub forbid_cwd: bool,
    /// Refuse jobs on a pseudo-terminal (exec -t).
    #[arg(long)]
    pub forbid_pty: bool,
    /// File transfers (put, get) only beneath DIR, repeatable; needed for them where
    /// exec is restricted (--argv-only, --allow-program) [default: anywhere the job
    /// user may go].
    #[arg(long = "files-root", value_name = "DIR")]
    pub files_root: Vec<PathBuf>,
    /// Exec token file [default: ~/.config/switchboard/token, created if missing].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How exec clients log in: the shared token, keys (authorized_keys, certificates), or
    /// either [default: token].
    #[arg(long, value_name = "MODE", value_parser = ["token", "key", "either"])]
    pub auth: Option<String>,
    /// Keys that may log in, with their options [default: ~/.config/switchboard/authorized_keys].
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,
    /// The host key that proves this server to key clients [default:
    /// ~/.config/switchboard/host_key, created if missing].
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,
    /// CA public keys whose user certificates are accepted.
    #[arg(long, value_name = "FILE")]
    pub trusted_user_ca: Option<PathBuf>,
    /// With --trusted-user-ca: the principals admitted, one a line with options
    /// [default: ~/.config/switchboard/authorized_principals].
    #[arg(long, value_name = "FILE")]
    pub authorized_principals: Option<PathBuf>,
    /// Public keys refused whatever else says (users' or CAs').
    #[arg(long, value_name = "FILE")]
    pub revoked_keys: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100.
    #[arg(long = "metrics", value_name = "ADDR")]
    pub metrics: Vec<String>,
    /// The audit trail (JSON lines; never silenced by -q or RUST_LOG): a FILE
    /// (appended, 0600, reopened on SIGHUP), - for stderr, or none [default: -].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<String>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help = with_default("How long open connections get to finish on SIGINT/SIGTERM", humantime::format_duration(defaults().server.shutdown_grace)))]
    pub shutdown_grace: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Use UDP (one datagram per request) instead of TCP.
    #[arg(long)]
    pub udp: bool,
    /// Time to wait for a connection or a reply, e.g. 2s, 500ms (over UDP,
    /// for all the tries of a request; 0: no limit).
    #[arg(long, default_value = "2s", value_parser = parse_wait)]
    pub timeout: Duration,
    /// UDP: send a request again up to N times (0-10) while no reply
    /// comes, the waits doubling within --timeout [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=crate::client::MAX_UDP_RETRIES as i64))]
    pub retries: Option<u32>,
    /// [ADDR] then TEXT: ADDR is HOST:PORT, tcp://HOST:PORT or udp://HOST:PORT
    /// (default 127.0.0.1:9000); TEXT words are joined with spaces.
    #[arg(value_name = "ADDR|TEXT")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TimeArgs {
    /// Time to wait for a reply, e.g. 2s, 500ms, for all the tries of a query
    /// (0: no limit).
    #[arg(long, default_value = "2s", value_parser = parse_wait)]
    pub timeout: Duration,
    /// Send a query again up to N times (0-10) while no reply comes, the
    /// waits doubling within --timeout.
    #[arg(long, value_name = "N", default_value_t = crate::client::DEFAULT_UDP_RETRIES, value_parser = clap::value_parser!(u32).range(0..=crate::client::MAX_UDP_RETRIES as i64))]
    pub retries: u32,
    /// [ADDR] then FORMAT: ADDR is HOST:PORT or udp://HOST:PORT (default
    /// 127.0.0.1:9001); FORMAT words are joined with spaces ('' = server default).
    #[arg(value_name = "ADDR|FORMAT")]
    pub args: Vec<String>,
}

/// Runs the parsed command; the returned code is the process's exit status.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Echo(args) => clients::echo(args),
        Command::Time(args) => clients::time(args),
        Command::Bench(args) => clients::bench(args),
        Command::Exec(args) => exec::exec(args),
        Command::Jobs(args) => jobs::jobs(args),
        Command::Attach(args) => jobs::attach(args),
        Command::Keygen(args) => clients::keygen(args),
        Command::Put(args) => transfer::put(args),
        Command::Get(args) => transfer::get(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "switchboard",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => man_pages().and_then(|pages| {
            use anyhow::Context as _;
            use std::io::Write as _;
            let (_, top) = pages.first().context("no man page")?;
            std::io::stdout().write_all(top)?;
            Ok(ExitCode::SUCCESS)
        }),
        // The top page's SEE ALSO names switchboard-exec(1) and the others:
        // these are they.
        Command::Man { dir: Some(dir) } => man_pages().and_then(|pages| {
            use anyhow::Context as _;
            for (name, page) in pages {
                let path = dir.join(name);
                std::fs::write(&path, page)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`switchboard man | head`) is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            say!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The manual: `switchboard.1`, then `switchboard-SUBCOMMAND.1` for each
/// subcommand, as (file name, roff). Each is titled with its full name and
/// dated (`SOURCE_DATE_EPOCH` when set, for reproducible packages; else
/// today), and clap_mangen's paragraph breaks around blank help lines are
/// tidied so that `mandoc -T lint` finds nothing to warn about.
fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use clap::CommandFactory;
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(chrono::Utc::now)
        .format("%Y-%m-%d")
        .to_string();
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut commands = vec![top.clone()];
    commands.extend(top.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| {
        let name = format!("switchboard-{}", s.get_name());
        s.clone().display_name(name)
    }));
    let mut pages = Vec::new();
    for cmd in commands {
        let name = cmd
            .get_display_name()
            .unwrap_or_else(|| cmd.get_name())
            .to_string();
        let man = clap_mangen::Man::new(cmd)
            .title(name.to_uppercase())
            .date(date.clone())
            .source(format!("switchboard {}", env!("CARGO_PKG_VERSION")))
            .manual("switchboard manual");
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let text = String::from_utf8_lossy(&roff)
            .replace(".br\n\n.br\n", ".sp\n")
            .replace("\n\n.br\n", "\n.sp\n");
        pages.push((format!("{name}.1"), text.into_bytes()));
    }
    Ok(pages)
}

/// Sets up `tracing`: RUST_LOG if set, else a level from -v/-q. Servers
/// log at info by default, clients only warnings.
pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.quiet, cli.verbose, &cli.command) {
        (true, _, _) => "warn",
        (_, 0, Command::Serve(_)) => "info",
        (_, 0, _) => "warn",
        (_, 1, _) => "debug",
        _ => "trace",
    };
    // A RUST_LOG that does not parse is said, not silently replaced.
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            say!("switchboard: RUST_LOG={spec:?} is not a filter ({e}); logging at {default}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Never stderr directly: see `logsink` for what a full disk or a
    // closed pipe would otherwise do to the task that logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .log_internal_errors(false)
        .with_writer(crate::logsink::stderr());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Tells the user a server's certificate was trusted on first use (as ssh
/// says "Permanently added ... to the list of known hosts"), or that it
/// could not be recorded and will be trusted afresh next time (as ssh
/// says "Failed to add the host to the list of known hosts").
fn tell_first_use(addr: &str, first: &crate::tls::FirstUse) {
    let (fp, kind) = (&first.fingerprint, first.kind);
    match &first.recorded {
        Ok(()) => {
            say!("switchboard: new server {addr}: {kind} {fp} recorded in known_hosts")
        }
        Err(e) => say!(
            "switchboard: warning: new server {addr}: {kind} {fp} trusted for this \
             connection only: {e}; the next connection will trust on first use again"
        ),
    }
}

// The value lists of `--echo-mode` and `bench MODE`: the library's enums
// know their names and help lines, the command line turns them into clap
// values (so the library does not depend on clap).
impl clap::ValueEnum for crate::config::EchoMode {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.help()))
    }
}

impl clap::ValueEnum for crate::bench::Mode {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.help()))
    }
}

/// The built-in configuration: the one source of the defaults that
/// `serve --help` shows.
fn defaults() -> crate::config::ServerConfig {
    crate::config::ServerConfig::default()
}

/// A flag's help line with its default, taken from the configuration's
/// `Default` (so the two cannot disagree).
fn with_default(text: &str, value: impl std::fmt::Display) -> String {
    format!("{text} [default: {value}]")
}

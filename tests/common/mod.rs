//! Test helpers: an in-process server on port 0, and the real binary
//! spawned as a child process (stopped by its PID when dropped).
#![allow(dead_code)]

use std::io::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::config::ServerConfig;
use switchboard::endpoint::{Endpoint, Transport};
use switchboard::server::stats::Stats;
use switchboard::server::{Server, Service};
use tokio_util::sync::CancellationToken;

/// A configuration with every service on 127.0.0.1, port 0.
pub fn loopback_config() -> ServerConfig {
    let mut cfg = ServerConfig::default();
    cfg.echo.listen = vec![
        Endpoint::new(Transport::Tcp, "127.0.0.1", 0),
        Endpoint::new(Transport::Udp, "127.0.0.1", 0),
    ];
    cfg.time.listen = vec![Endpoint::new(Transport::Udp, "127.0.0.1", 0)];
    cfg.exec.listen = vec![];
    cfg
}

/// Exec on 127.0.0.1:0 with its token file in `dir`; nothing else.
pub fn exec_config(dir: &std::path::Path) -> ServerConfig {
    let mut cfg = ServerConfig::default();
    cfg.echo.listen = vec![];
    cfg.time.listen = vec![];
    cfg.exec.listen = vec![Endpoint::new(Transport::Tcp, "127.0.0.1", 0)];
    cfg.exec.token_file = Some(dir.join("token"));
    // CI runs as root; the refusal of root jobs has its own test.
    cfg.exec.allow_root = true;
    cfg
}

/// A server running in this test's runtime.
pub struct TestServer {
    pub echo_tcp: SocketAddr,
    pub echo_udp: SocketAddr,
    pub time_udp: SocketAddr,
    pub exec: SocketAddr,
    pub legacy: SocketAddr,
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn start(cfg: ServerConfig) -> TestServer {
    let _ = switchboard::sys::raise_fd_limit();
    let server = Server::bind(cfg).await.expect("bind");
    let none: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let echo_tcp = server.addr(Service::Echo, Transport::Tcp).unwrap_or(none);
    let echo_udp = server.addr(Service::Echo, Transport::Udp).unwrap_or(none);
    let time_udp = server.addr(Service::Time, Transport::Udp).unwrap_or(none);
    let exec = server.addr(Service::Exec, Transport::Tcp).unwrap_or(none);
    let legacy = server
        .addr(Service::ExecLegacy, Transport::Tcp)
        .unwrap_or(none);
    let stats = server.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    TestServer {
        echo_tcp,
        echo_udp,
        time_udp,
        exec,
        legacy,
        stats,
        shutdown,
        task: Some(task),
    }
}

impl TestServer {
    /// Cancels and waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A current-thread runtime for tests that drive a server process.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// `switchboard serve` as a child process, with the endpoints its banner
/// printed. Killed by PID and reaped on drop.
pub struct ServeProcess {
    pub child: Child,
    /// HOME and XDG_CONFIG_HOME of the server (its token lives here).
    pub home: tempfile::TempDir,
    pub endpoints: Vec<(String, Endpoint)>,
    pub banner: Vec<String>,
}

/// Starts `switchboard serve ARGS` (plus `--exec tcp://127.0.0.1:0` unless
/// ARGS name exec endpoints), with HOME in a temporary directory.
pub fn spawn_serve(args: &[&str]) -> ServeProcess {
    spawn_serve_env(args, &[])
}

/// `switchboard serve` taking keys from `authorized_keys`, exec only,
/// with `extra` flags.
pub fn spawn_key_server(authorized_keys: &std::path::Path, extra: &[&str]) -> ServeProcess {
    let mut args = vec![
        "--echo",
        "none",
        "--time",
        "none",
        "--auth",
        "key",
        "--authorized-keys",
        authorized_keys.to_str().expect("utf-8"),
    ];
    args.extend(extra);
    spawn_serve(&args)
}

pub fn spawn_serve_env(args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
    spawn_serve_under(&[], args, env)
}

/// Like [`spawn_serve_env`], run under `prefix` (e.g. `prlimit --nofile=64`).
pub fn spawn_serve_under(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
    spawn(prefix, args, env, !args.contains(&"--exec"), None)
}

/// Like [`spawn_serve`], with the server's stderr going to `stderr`
/// instead of the log file [`ServeProcess::log`] reads.
pub fn spawn_serve_stderr(args: &[&str], stderr: Stdio) -> ServeProcess {
    spawn(&[], args, &[], !args.contains(&"--exec"), Some(stderr))
}

/// `switchboard serve ARGS` with no exec endpoint added: the
/// configuration file (or ARGS) must name one on port 0.
pub fn spawn_serve_exact(args: &[&str]) -> ServeProcess {
    spawn(&[], args, &[], false, None)
}

fn spawn(
    prefix: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
    add_exec: bool,
    stderr: Option<Stdio>,
) -> ServeProcess {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("serve").args(args);
    if add_exec {
        cmd.args(["--exec", "tcp://127.0.0.1:0"]);
    }
    // CI runs as root; the test of the refusal of root jobs sets SB_TEST_NO_ALLOW_ROOT.
    if !args.contains(&"--run-as") && !env.iter().any(|(k, _)| *k == "SB_TEST_NO_ALLOW_ROOT") {
        cmd.arg("--allow-root");
    }
    let log = match stderr {
        Some(s) => s,
        None => std::fs::File::create(home.path().join("server.log"))
            .expect("log file")
            .into(),
    };
    let mut child = cmd
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn switchboard serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    let mut endpoints = Vec::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server exited before its banner was complete: {banner:?}");
        };
        banner.push(line.clone());
        if line.starts_with("ready") {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [service, endpoint, ..] = words[..]
            && let Ok(e) = endpoint.parse::<Endpoint>()
        {
            endpoints.push((service.to_string(), e));
        }
    }
    ServeProcess {
        child,
        home,
        endpoints,
        banner,
    }
}

impl ServeProcess {
    /// `HOST:PORT` of the first endpoint of `service` over `transport`.
    pub fn addr(&self, service: &str, transport: Transport) -> String {
        self.endpoints
            .iter()
            .find(|(s, e)| s == service && e.transport == transport)
            .map(|(_, e)| e.host_port())
            .unwrap_or_else(|| panic!("no {service} {transport} endpoint in {:?}", self.banner))
    }

    /// What the server has logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }

    /// The audit records the server has written so far: the JSON lines of
    /// its stderr (the default `server.audit_log`) that have an `audit`.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("audit").is_some())
            .collect()
    }

    /// Waits (at most 10 s) until `times` audit records match `pred`, and
    /// returns those that do.
    pub fn wait_audit(
        &self,
        times: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let found: Vec<_> = self.audit().into_iter().filter(|r| pred(r)).collect();
            if found.len() >= times || start.elapsed() > Duration::from_secs(10) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 10 s) until the log holds `needle` `times` times.
    pub fn wait_log(&self, needle: &str, times: usize) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.log().matches(needle).count() >= times {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// An authenticated client of this server's (first tcp://) exec
    /// endpoint, with its token.
    pub async fn exec_client(&self) -> switchboard::client::ExecClient {
        use switchboard::client::{ClientAuth, ExecClient};
        let token = switchboard::secrets::read_token(&self.token_file()).expect("token");
        let addr = self.addr("exec", Transport::Tcp);
        ExecClient::connect(&addr, &ClientAuth::token(token), Duration::from_secs(10))
            .await
            .expect("connect")
    }

    /// Runs `cmd` on this server's exec endpoint `addr` with its token, in
    /// a runtime of its own; the job's stdout.
    pub fn run_job(&self, addr: &str, cmd: &str) -> Vec<u8> {
        use switchboard::client::{ClientAuth, ExecClient};
        let token = switchboard::secrets::read_token(&self.token_file()).expect("token");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let auth = ClientAuth::token(token);
            let mut c = ExecClient::connect(addr, &auth, Duration::from_secs(5))
                .await
                .expect("connect");
            c.run(cmd).await.expect("run").stdout
        })
    }

    /// The server's token file.
    pub fn token_file(&self) -> std::path::PathBuf {
        self.home.path().join(".config/switchboard/token")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the server by its PID.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the server, from /proc.
    pub fn rss_kib(&self) -> u64 {
        switchboard::bench::rss_kib(self.child.id()).unwrap_or(0)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `switchboard serve ARGS` with `sockets` passed by socket activation
/// (LISTEN_FDS, LISTEN_FDNAMES = `names`, LISTEN_PID = its own pid), HOME in
/// `home`. Stdout piped (the banner), stderr piped (why it refused).
pub fn activated_command(
    sockets: &[std::os::fd::RawFd],
    names: &str,
    args: &[&str],
    home: &std::path::Path,
) -> Command {
    use std::os::unix::process::CommandExt;
    let fds = sockets.to_vec();
    // systemd sets LISTEN_PID to the service's own pid: the shell's $$ is
    // the server's pid after `exec`.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" serve \"$@\"", bin()])
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("RUST_LOG")
        .env_remove("SWITCHBOARD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only dup2/close, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move out of the way first, so that a source already at 3..
            // is not overwritten (dup2 also clears close-on-exec).
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 100 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..fds.len() as i32 {
                if libc::dup2(100 + i, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(100 + i);
            }
            Ok(())
        });
    }
    cmd
}

/// Waits up to `limit` for `child` to exit; kills it (by its PID) if it
/// has not, and returns its status only if it exited by itself.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A TCP connection to `to` from the loopback address `from` (another
/// "source" as far as per-source limits are concerned).
pub fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: SocketAddr = format!("{from}:0").parse().map_err(std::io::Error::other)?;
    s.bind(&local.into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// Raw `switchboard/1` frames over a plain TCP stream, for tests that must
/// send what no well-behaved client would.
pub mod raw {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde_json::{Value, json};
    use switchboard::proto::auth::Token;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// How long a read may wait before the test fails.
    const T: Duration = Duration::from_secs(10);

    /// Writes one frame: `header` as JSON, then `body` (its size must be in
    /// the header, or not, as the test wants).
    pub async fn send(s: &mut TcpStream, header: Value, body: &[u8]) {
        s.write_all(&frame(header, body)).await.expect("write");
    }

    /// The bytes of one frame: `header` as JSON, then `body`.
    pub fn frame(header: Value, body: &[u8]) -> Vec<u8> {
        let h = serde_json::to_vec(&header).expect("json");
        let mut f = (h.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(body);
        f
    }

    /// Reads one frame; None at EOF (or a broken connection). Fails the
    /// test if nothing arrives within 10 s.
    pub async fn recv(s: &mut TcpStream) -> Option<(Value, Vec<u8>)> {
        let mut len = [0u8; 4];
        tokio::time::timeout(T, s.read_exact(&mut len))
            .await
            .expect("a frame or EOF within 10 s")
            .ok()?;
        let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut h).await.ok()?;
        let header: Value = serde_json::from_slice(&h).expect("a JSON header");
        let mut body = vec![0u8; header["size"].as_u64().unwrap_or(0) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some((header, body))
    }

    /// Connects and authenticates with `token`, checking the server's hello
    /// and its proof of the token.
    pub async fn authed(addr: SocketAddr, token: &Token) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let (hello, _) = recv(&mut s).await.expect("hello");
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["version"], 1);
        assert_eq!(hello["auth"], "hmac-sha256");
        let sn = hello["nonce"].as_str().expect("nonce").to_string();
        assert_eq!(sn.len(), 64);
        let cn = "ab".repeat(32);
        let mac = token.client_mac(&sn, &cn);
        send(
            &mut s,
            json!({"type":"auth","version":1,"nonce":cn,"mac":mac}),
            b"",
        )
        .await;
        let (ready, _) = recv(&mut s).await.expect("ready");
        assert_eq!(ready["type"], "ready");
        assert!(token.verify_server(&sn, &cn, ready["mac"].as_str().expect("mac")));
        s
    }
}

/// A loopback port where connections are refused, held so for as long as
/// the returned socket lives: bound but not listening, so no other process
/// can start listening there meanwhile (a port merely closed again could).
pub fn refusing_port() -> (socket2::Socket, u16) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    s.bind(&any.into()).expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("a bound port");
    (s, port)
}

/// A throwaway system user, deleted when dropped (also when the test fails).
pub struct TempUser {
    pub name: String,
}

impl TempUser {
    /// A user for `--run-as`, which needs a root server: None (and a loud
    /// message) when this process is not root or cannot create users.
    pub fn for_run_as() -> Option<TempUser> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: --run-as needs a root server");
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("sbt{}x{}", std::process::id(), nanos % 100_000);
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/false"])
            .arg(&name)
            .status();
        match st {
            Ok(s) if s.success() => Some(TempUser { name }),
            other => {
                eprintln!("SKIPPED: cannot create a throwaway user with useradd: {other:?}");
                None
            }
        }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

// Helpers for running the binary as a client.

/// Runs the client binary with `args` and `input` on stdin, with HOME in a
/// temporary directory so no history lands in the real one.
pub fn client(args: &[&str], input: Option<&[u8]>) -> Output {
    let home = tempfile::tempdir().unwrap();
    client_in(home.path(), args, input)
}

/// Runs the client binary with HOME (and the XDG directories) at `home`.
pub fn client_in(home: &std::path::Path, args: &[&str], input: Option<&[u8]>) -> Output {
    client_env(home, args, input, &[])
}

/// [`client_in`] with more environment variables. The caller's agent and
/// askpass are never inherited: a test names its own.
pub fn client_env(
    home: &std::path::Path,
    args: &[&str],
    input: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_ASKPASS")
        .env_remove("SSH_ASKPASS_REQUIRE")
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn serve_all() -> ServeProcess {
    spawn_serve(&["--echo", "127.0.0.1:0", "--time", "127.0.0.1:0"])
}

pub fn exec_status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A small tmpfs mounted for a test (a disk that fills up), unmounted on
/// drop. `None`, said loudly, when this process may not mount (not root).
pub struct SmallTmpfs {
    pub dir: tempfile::TempDir,
}

impl SmallTmpfs {
    pub fn mount(size: &str, test: &str) -> Option<SmallTmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIP {test}: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallTmpfs { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the file system: a file of zeros written until ENOSPC.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        // The last partial block: byte by byte until nothing fits.
        while f.write_all(&block[..1]).is_ok() {}
        path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A UDP relay between one client and `server` that drops the datagrams
/// `lose(toward_server, index)` picks (`index` counts each direction's
/// datagrams from 0): a lossy network path on loopback. Stopped on drop.
pub struct LossyUdpProxy {
    /// Where clients send.
    pub addr: SocketAddr,
    /// Datagrams dropped so far, both directions.
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LossyUdpProxy {
    pub fn start(
        server: SocketAddr,
        lose: impl Fn(bool, u64) -> bool + Send + Sync + 'static,
    ) -> LossyUdpProxy {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let front = UdpSocket::bind("127.0.0.1:0").expect("proxy front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("proxy back");
        back.connect(server).expect("proxy back connect");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let lose = Arc::new(lose);
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let up = {
            let (stop, dropped, client, lose) =
                (stop.clone(), dropped.clone(), client.clone(), lose.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *client.lock().unwrap() = Some(from);
                    if lose(true, i) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = back.send(&buf[..n]);
                    }
                    i += 1;
                }
            })
        };
        let down = {
            let (stop, dropped) = (stop.clone(), dropped.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = back2.recv(&mut buf) else {
                        continue;
                    };
                    let to = *client.lock().unwrap();
                    if lose(false, i) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(to) = to {
                        let _ = front2.send_to(&buf[..n], to);
                    }
                    i += 1;
                }
            })
        };
        LossyUdpProxy {
            addr,
            dropped,
            stop,
            threads: vec![up, down],
        }
    }

    /// Loses `percent`% of each direction's datagrams, the same ones on
    /// every run (a hash of direction and index, not a clock or an RNG).
    pub fn with_loss(server: SocketAddr, percent: u64) -> LossyUdpProxy {
        LossyUdpProxy::start(server, move |up, i| {
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(up);
            x ^= x >> 31;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 29;
            x % 100 < percent
        })
    }
}

impl Drop for LossyUdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// Keys for the tests of identities.

/// A new unencrypted key pair `dir/name` with comment `name`; its path.
pub fn new_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    switchboard::identity::keys::keygen(&path, name, "").expect("keygen");
    path
}

/// The public line of the key at `path`.
pub fn public(path: &std::path::Path) -> String {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    std::fs::read_to_string(std::path::PathBuf::from(p))
        .expect("the .pub file")
        .trim()
        .to_string()
}

pub fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

pub fn key_auth(path: &std::path::Path) -> switchboard::client::ClientAuth {
    let key = switchboard::identity::keys::ClientKey::find(Some(path))
        .expect("key")
        .expect("a key");
    switchboard::client::ClientAuth::key(Arc::new(key), None)
}

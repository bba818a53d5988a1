//! The conventions of a daemon under systemd: socket activation
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, as `sd_listen_fds(3)`
//! describes) and readiness notification (`NOTIFY_SOCKET`, `sd_notify(3)`).
//!
//! ```text
//! fd 3 .. 3+LISTEN_FDS-1   sockets, in the order of the .socket unit
//! LISTEN_FDNAMES           their FileDescriptorName=s, ':'-separated:
//!                          echo | time | exec | exec-tls | exec-legacy | metrics
//! ```

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, bail};

use crate::endpoint::Transport;
use crate::exposure::Service;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// A socket passed in by the service manager.
pub enum PassedSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// A passed socket and the service it is for.
pub struct Passed {
    pub service: Service,
    pub transport: Transport,
    pub socket: PassedSocket,
}

/// The sockets passed to this process, if it was socket-activated; None
/// when `LISTEN_PID` is not this process (the variables are then for
/// someone else and are left alone). The variables are removed so that
/// nothing started later inherits them.
///
/// # Safety
///
/// Call it once, before any other thread exists: it removes environment
/// variables (which another thread could be reading), and it takes
/// ownership of descriptors 3 .. 3 + `LISTEN_FDS`, which nothing else in
/// the process may own or close.
pub unsafe fn listen_fds() -> anyhow::Result<Option<Vec<Passed>>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !pid_ok {
        return Ok(None);
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .context("LISTEN_PID without LISTEN_FDS")?
        .parse()
        .context("LISTEN_FDS is not a number")?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_string)
        .collect();
    // SAFETY: the caller promised no other thread exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !(0..=1024).contains(&n) {
        bail!("LISTEN_FDS={n} is out of range");
    }
    let mut out = Vec::new();
    for i in 0..n {
        let fd = FIRST_FD + i;
        let name = names.get(i as usize).map(String::as_str).unwrap_or("");
        let (service, tls) = match name {
            "echo" => (Service::Echo, false),
            "time" => (Service::Time, false),
            "exec" => (Service::Exec, false),
            "exec-tls" => (Service::Exec, true),
            "exec-legacy" => (Service::ExecLegacy, false),
            "metrics" => (Service::Metrics, false),
            other => bail!(
                "passed socket {i} (fd {fd}) is named {other:?}; name it with FileDescriptorName= \
                 echo, time, exec, exec-tls, exec-legacy or metrics"
            ),
        };
        // SAFETY: the service manager passed fd 3.. as open sockets, the
        // caller promised nothing else owns them, and each is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = socket2::Socket::from(owned);
        // The descriptors come without close-on-exec; jobs must not inherit them.
        sock.set_cloexec(true)?;
        let kind = sock
            .r#type()
            .with_context(|| format!("fd {fd} is not a socket"))?;
        let socket = if kind == socket2::Type::STREAM {
            PassedSocket::Tcp(std::net::TcpListener::from(sock))
        } else if kind == socket2::Type::DGRAM {
            PassedSocket::Udp(std::net::UdpSocket::from(sock))
        } else {
            bail!("fd {fd} is neither a stream nor a datagram socket");
        };
        let transport = match (&socket, tls) {
            (PassedSocket::Udp(_), _) => Transport::Udp,
            (PassedSocket::Tcp(_), true) => Transport::Tls,
            (PassedSocket::Tcp(_), false) => Transport::Tcp,
        };
        crate::exposure::transport_allowed(service, transport)
            .with_context(|| format!("passed socket {i} ({name})"))?;
        out.push(Passed {
            service,
            transport,
            socket,
        });
    }
    Ok(Some(out))
}

/// Tells the service manager something (`READY=1`, `RELOADING=1`,
/// `STOPPING=1`, `STATUS=...`), if it asked (`NOTIFY_SOCKET`). Errors are
/// returned for logging; a daemon runs on without a listener.
pub fn notify(state: &str) -> std::io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

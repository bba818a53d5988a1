//! `authorized_keys` and `authorized_principals`: which keys and which
//! certificate principals may log in, as whom, and under what
//! restrictions. OpenSSH's formats (sshd(8) "AUTHORIZED_KEYS FILE FORMAT",
//! `AuthorizedPrincipalsFile`), with switchboard's own options.
//!
//! ```text
//! authorized_keys:        [OPTIONS] ssh-ed25519 AAAAC3Nza... NAME
//! authorized_principals:  [OPTIONS] PRINCIPAL
//!
//! OPTIONS, comma-separated, values in double quotes:
//!   from="10.0.0.0/8,!10.0.0.7,::1"   source addresses (CIDR; ! excludes)
//!   run-as="deploy"                    jobs run as this user (root server)
//!   programs="uptime,/usr/bin/df"      argv only, argv[0] one of these
//!   no-env  no-cwd  no-pty             refuse env / cwd / a terminal
//!   restrict                           all three; `pty` gives the terminal back
//!   max-jobs=N  max-connections=N      per identity, over all connections
//!   expiry-time="YYYYMMDD[HHMM[SS]]"   local time; refused from then on
//! ```
//!
//! A key's identity is its line's comment (NAME), a certificate's is the
//! principal it was admitted by. Lines of one identity must carry the same
//! options, since limits and policy are per identity. Anything this module
//! does not know is an error naming the file and line, never ignored: an
//! option that was meant to restrict and is skipped would grant instead.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use ssh_key::{Algorithm, HashAlg, PublicKey};

use crate::server::exec::policy::RunAs;

/// The longest identity name (a key's comment, a principal).
pub const MAX_NAME: usize = 128;

/// What one identity may do, beyond the server's own policy (which still
/// applies: these only narrow it, but for `run-as`, which picks the user).
#[derive(Debug, Clone, Default)]
pub struct Restrictions {
    /// Source addresses allowed; empty: any.
    pub from: Vec<SourcePattern>,
    pub run_as: Option<RunAs>,
    /// `argv[0]` must be one of these (compared as written); implies argv
    /// only and restricted `env`, as the server's own allow-list does.
    pub programs: Option<Vec<String>>,
    pub no_env: bool,
    pub no_cwd: bool,
    pub no_pty: bool,
    pub max_jobs: Option<usize>,
    pub max_connections: Option<usize>,
    /// Unix time from which the entry no longer admits anyone.
    pub expiry: Option<i64>,
    /// File transfers only beneath these directories (`files=`); with
    /// the server's `files_root`, each must lie within one of those.
    pub files: Option<Vec<std::path::PathBuf>>,
    /// The options as written, to compare lines of one identity.
    text: String,
}

impl Restrictions {
    /// No restrictions: the token's, or no authentication's.
    pub const NONE: Restrictions = Restrictions {
        from: Vec::new(),
        run_as: None,
        programs: None,
        no_env: false,
        no_cwd: false,
        no_pty: false,
        max_jobs: None,
        max_connections: None,
        expiry: None,
        files: None,
        text: String::new(),
    };

    /// Whether `ip` may use this entry (`from=`). A positive pattern must
    /// match (when there is one) and no `!` pattern may.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        source_allowed(&self.from, ip)
    }

    /// Whether the entry has expired at Unix time `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.expiry.is_some_and(|e| now >= e)
    }
}

/// Whether `ip` passes a `from=` list (OpenSSH's semantics, addresses only).
pub fn source_allowed(patterns: &[SourcePattern], ip: IpAddr) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let ip = ip.to_canonical();
    let mut allowed = false;
    for p in patterns {
        if p.cidr.contains(ip) {
            if p.negated {
                return false;
            }
            allowed = true;
        }
    }
    allowed
}

/// One `from=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePattern {
    pub negated: bool,
    pub cidr: Cidr,
}

/// An address block: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ADDR` or `ADDR/LEN`, IPv4 or IPv6. Host bits set below the prefix
    /// are an error, as OpenSSH's `addr_pton_cidr` has it: `10.0.0.1/8`
    /// is more likely a typo than a meaning.
    pub fn parse(s: &str) -> anyhow::Result<Cidr> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let written: IpAddr = addr
            .parse()
            .with_context(|| format!("{s:?} is not an address (names are not resolved)"))?;
        let max_written = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max_written,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max_written)
                .with_context(|| format!("bad prefix length in {s:?}"))?,
        };
        // Peers are compared as IPv4 when they are IPv4-mapped, so is a
        // mapped block (::ffff:10.0.0.0/104 is 10.0.0.0/8); a block wider
        // than the mapped range is an IPv6 one.
        let addr = written.to_canonical();
        let prefix = match (written, addr) {
            (IpAddr::V6(_), IpAddr::V4(_)) if prefix >= 96 => prefix - 96,
            (IpAddr::V6(_), IpAddr::V4(_)) => {
                bail!("{s:?}: an IPv4-mapped block must be /96 or longer")
            }
            _ => prefix,
        };
        let c = Cidr { addr, prefix };
        if c.masked(addr) != addr {
            bail!("{s:?} has host bits set below /{prefix}");
        }
        Ok(c)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & m).into())
            }
            IpAddr::V6(v6) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & m).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

/// A comma list of address blocks (a certificate's `source-address`).
pub fn parse_cidrs(list: &str) -> anyhow::Result<Vec<Cidr>> {
    list.split(',').map(|s| Cidr::parse(s.trim())).collect()
}

/// One `authorized_keys` line.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub name: String,
    pub key: PublicKey,
    pub restrictions: Arc<Restrictions>,
    pub line: usize,
}

/// One `authorized_principals` line.
#[derive(Debug, Clone)]
pub struct PrincipalEntry {
    pub name: String,
    pub restrictions: Arc<Restrictions>,
    pub line: usize,
}

/// Parses an `authorized_keys` file's text (`path` for messages). Only
/// Ed25519 keys are accepted; a key listed twice is an error (which line
/// would win?).
pub fn parse_keys(text: &str, path: &Path) -> anyhow::Result<Vec<KeyEntry>> {
    let mut out: Vec<KeyEntry> = Vec::new();
    for (n, line) in lines(text) {
        let at = || format!("{}:{n}", path.display());
        let (opts, rest) = split_options(line, true).with_context(at)?;
        let key = PublicKey::from_openssh(rest)
            .map_err(|e| anyhow::anyhow!("not a public key line ({e})"))
            .with_context(at)?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(anyhow::anyhow!(
                "{} keys are not accepted (Ed25519 only)",
                key.algorithm()
            ))
            .with_context(at);
        }
        if !super::strong_ed25519(key.key_data()) {
            bail!("{}: a weak (small-order) Ed25519 key", at());
        }
        let fp = key.fingerprint(HashAlg::Sha256);
        let name = match key.comment().trim() {
            "" => fp.to_string(),
            c => c.to_string(),
        };
        check_name(&name).with_context(at)?;
        if let Some(dup) = out
            .iter()
            .find(|e| e.key.fingerprint(HashAlg::Sha256) == fp)
        {
            bail!("{}: key {fp} is already on line {}", at(), dup.line);
        }
        let restrictions = parse_options(opts).with_context(at)?;
        let restrictions = share(&out, &name, restrictions, |e| {
            (&e.name, &e.restrictions, e.line)
        })
        .with_context(at)?;
        out.push(KeyEntry {
            name,
            key,
            restrictions,
            line: n,
        });
    }
    Ok(out)
}

/// Parses an `authorized_principals` file's text.
pub fn parse_principals(text: &str, path: &Path) -> anyhow::Result<Vec<PrincipalEntry>> {
    let mut out: Vec<PrincipalEntry> = Vec::new();
    for (n, line) in lines(text) {
        let at = || format!("{}:{n}", path.display());
        let (opts, name) = split_options(line, false).with_context(at)?;
        if name.split_whitespace().count() != 1 {
            bail!("{}: one principal per line, got {name:?}", at());
        }
        check_name(name).with_context(at)?;
        if let Some(dup) = out.iter().find(|e| e.name == name) {
            bail!(
                "{}: principal {name:?} is already on line {}",
                at(),
                dup.line
            );
        }
        out.push(PrincipalEntry {
            name: name.to_string(),
            restrictions: Arc::new(parse_options(opts).with_context(at)?),
            line: n,
        });
    }
    Ok(out)
}

/// Numbered lines that are neither blank nor `#` comments.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Identity names go to logs, audit records and metric labels: printable,
/// bounded.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.len() > MAX_NAME || !super::plain_text(name) {
        bail!(
            "the name {name:?} is longer than {MAX_NAME} bytes or has control or invisible \
             characters"
        );
    }
    // The names the server gives connections that are no key's: one of
    // them on a key (in any case) would mix its jobs and failures with
    // theirs in metric labels and audit records, or pass for them.
    let lower = name.to_lowercase();
    if lower == "none" || lower == "unknown" || lower.starts_with("token:") {
        bail!("the name {name:?} is reserved (none, unknown, token:…); give the key another");
    }
    Ok(())
}

/// The same options for every line of one identity: its entries then
/// share one `Restrictions`.
fn share<E>(
    seen: &[E],
    name: &str,
    r: Restrictions,
    parts: impl Fn(&E) -> (&String, &Arc<Restrictions>, usize),
) -> anyhow::Result<Arc<Restrictions>> {
    match seen.iter().map(parts).find(|(n, _, _)| *n == name) {
        Some((_, prev, _)) if prev.text == r.text => Ok(prev.clone()),
        Some((_, _, line)) => bail!(
            "{name:?} is also on line {line} with other options; one identity, one set of options"
        ),
        None => Ok(Arc::new(r)),
    }
}

/// Splits a line into its options and the rest. Options come first when
/// the line does not start with what follows them: for keys, a key type
/// (`ssh-…`); for principals, whenever there are two words. Options end at
/// the first whitespace outside double quotes, as sshd reads them.
fn split_options(line: &str, keys: bool) -> anyhow::Result<(&str, &str)> {
    let has_options = if keys {
        !line.starts_with("ssh-") && !line.starts_with("ecdsa-") && !line.starts_with("sk-")
    } else {
        line.split_whitespace().nth(1).is_some()
    };
    if !has_options {
        return Ok(("", line));
    }
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                let (opts, rest) = line.split_at(i);
                return Ok((opts, rest.trim_start()));
            }
            _ => {}
        }
    }
    if quoted {
        bail!("unterminated quote in the options");
    }
    bail!("options but nothing after them")
}

/// Parses an options field (see the module header).
pub fn parse_options(text: &str) -> anyhow::Result<Restrictions> {
    let mut r = Restrictions {
        text: text.to_string(),
        ..Restrictions::default()
    };
    let mut pty = false;
    let mut seen: Vec<String> = Vec::new();
    for opt in split_commas(text)? {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(unquote(v).with_context(|| format!("option {n}"))?)),
            None => (opt, None),
        };
        // Given twice, which would hold? The second could loosen what the
        // first meant to restrict (a tool that appends one, say).
        let key = name.to_ascii_lowercase();
        if seen.contains(&key) {
            bail!("option {name} is given twice");
        }
        seen.push(key);
        let need = || value.with_context(|| format!("option {name} needs a value: {name}=\"…\""));
        let flag = |v: &Option<&str>| -> anyhow::Result<()> {
            match v {
                None => Ok(()),
                Some(_) => bail!("option {name} takes no value"),
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "from" => {
                for p in need()?.split(',') {
                    let p = p.trim();
                    let (negated, p) = match p.strip_prefix('!') {
                        Some(rest) => (true, rest),
                        None => (false, p),
                    };
                    r.from.push(SourcePattern {
                        negated,
                        cidr: Cidr::parse(p).context("from=")?,
                    });
                }
            }
            "run-as" => r.run_as = Some(RunAs::resolve(need()?).context("run-as=")?),
            "programs" => {
                let list: Vec<String> = need()?.split(',').map(|p| p.trim().to_string()).collect();
                if let Some(bad) = list
                    .iter()
                    .find(|p| p.is_empty() || (p.contains('/') && !p.starts_with('/')))
                {
                    bail!("programs=: {bad:?} must be a bare name or an absolute path");
                }
                r.programs = Some(list);
            }
            "no-env" => {
                flag(&value)?;
                r.no_env = true
            }
            "no-cwd" => {
                flag(&value)?;
                r.no_cwd = true
            }
            "no-pty" => {
                flag(&value)?;
                r.no_pty = true
            }
            "restrict" => {
                flag(&value)?;
                (r.no_env, r.no_cwd, r.no_pty) = (true, true, true);
            }
            "pty" => {
                flag(&value)?;
                pty = true;
            }
            "max-jobs" => r.max_jobs = Some(count(name, need()?)?),
            "max-connections" => r.max_connections = Some(count(name, need()?)?),
            "expiry-time" => r.expiry = Some(expiry(need()?)?),
            "files" => {
                let dirs: Vec<std::path::PathBuf> =
                    need()?.split(',').map(|p| p.trim().into()).collect();
                if let Some(bad) = dirs.iter().find(|d| !d.is_absolute()) {
                    bail!("files=: {} must be an absolute path", bad.display());
                }
                r.files = Some(dirs);
            }
            _ => bail!(
                "unknown option {name:?} (known: from, run-as, programs, files, no-env, \
                 no-cwd, no-pty, restrict, pty, max-jobs, max-connections, expiry-time)"
            ),
        }
    }
    if pty {
        // restrict,pty is OpenSSH's idiom: all off but the terminal.
        // no-pty and pty together say two things; neither wins silently.
        if seen.iter().any(|o| o == "no-pty") {
            bail!("options no-pty and pty contradict each other");
        }
        r.no_pty = false;
    }
    Ok(r)
}

/// Splits at commas outside double quotes.
fn split_commas(text: &str) -> anyhow::Result<Vec<&str>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        bail!("unterminated quote in the options");
    }
    out.push(&text[start..]);
    if out.iter().any(|o| o.is_empty()) {
        bail!("an empty option (two commas in a row?)");
    }
    Ok(out)
}

/// A value: `"…"` (no quote inside) or a bare word.
fn unquote(v: &str) -> anyhow::Result<&str> {
    match v.strip_prefix('"') {
        Some(rest) => match rest.strip_suffix('"') {
            Some(inner) if !inner.contains('"') => Ok(inner),
            _ => bail!("badly quoted value {v:?}"),
        },
        None if v.contains('"') => bail!("badly quoted value {v:?}"),
        None => Ok(v),
    }
}

fn count(name: &str, v: &str) -> anyhow::Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .with_context(|| format!("{name}= must be a whole number of at least 1, not {v:?}"))
}

/// `YYYYMMDD[HHMM[SS]]` in the server's local time, as sshd reads it.
fn expiry(v: &str) -> anyhow::Result<i64> {
    use chrono::{Local, NaiveDateTime, TimeZone};
    let padded = match v.len() {
        8 => format!("{v}000000"),
        12 => format!("{v}00"),
        14 => v.to_string(),
        _ => bail!("expiry-time= must be YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, not {v:?}"),
    };
    let t = NaiveDateTime::parse_from_str(&padded, "%Y%m%d%H%M%S")
        .with_context(|| format!("expiry-time={v:?} is not a date"))?;
    Local
        .from_local_datetime(&t)
        .earliest()
        .map(|t| t.timestamp())
        .with_context(|| format!("expiry-time={v:?} does not exist in local time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENV2FTpFK4YWFLKGV9TAvHUVmOXpgTiMrn4yMxVZha4";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHXgPuJEYou8XQe6BvT48Fny9zM3LAhVUCBvde5YpP2j";

    fn keys(text: &str) -> anyhow::Result<Vec<KeyEntry>> {
        parse_keys(text, Path::new("ak"))
    }

    #[test]
    fn options_are_read_as_sshd_reads_them() {
        let text = format!(
            "# comment\n\n{KEY_A} alice@laptop\n\
             from=\"127.0.0.0/8,!127.0.0.9\",programs=\"uptime,/bin/df\",no-env,max-jobs=2 {KEY_B} bob\n"
        );
        let k = keys(&text).unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].name, "alice@laptop");
        assert_eq!(k[0].line, 3);
        let r = &k[1].restrictions;
        assert_eq!(k[1].name, "bob");
        assert!(r.no_env && !r.no_cwd && !r.no_pty);
        assert_eq!(r.max_jobs, Some(2));
        assert_eq!(
            r.programs.as_deref(),
            Some(&["uptime".to_string(), "/bin/df".to_string()][..])
        );
        assert!(r.allows_source("127.0.0.1".parse().unwrap()));
        assert!(r.allows_source("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!r.allows_source("127.0.0.9".parse().unwrap()));
        assert!(!r.allows_source("10.0.0.1".parse().unwrap()));
        assert!(!r.allows_source("::1".parse().unwrap()));
    }

    #[test]
    fn anything_unknown_is_an_error_with_its_line() {
        for (bad, why) in [
            (format!("bogus {KEY_A} x"), "unknown option"),
            (
                format!("from=\"example.com\" {KEY_A} x"),
                "names are not resolved",
            ),
            (format!("from=\"10.0.0.1/8\" {KEY_A} x"), "host bits"),
            (format!("max-jobs=0 {KEY_A} x"), "at least 1"),
            (format!("no-env=\"1\" {KEY_A} x"), "takes no value"),
            (format!("expiry-time=\"2020\" {KEY_A} x"), "YYYYMMDD"),
            (format!("programs=\"bin/x\" {KEY_A} x"), "absolute"),
            (format!("from=\"127.0.0.1 {KEY_A} x"), "unterminated"),
            (format!("files=\"srv\" {KEY_A} x"), "absolute"),
            (
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDb x".to_string(),
                "public key",
            ),
            (format!("{KEY_A} x\n{KEY_A} y"), "already on line 2"),
            (format!("{KEY_A} x\nno-pty {KEY_B} x"), "other options"),
            (format!("{KEY_A} a\u{7}b"), "control"),
        ] {
            let text = format!("# first\n{bad}\n");
            let e = format!("{:#}", keys(&text).unwrap_err());
            assert!(e.contains("ak:2") || e.contains("ak:3"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn an_option_given_twice_is_an_error() {
        for twice in [
            "expiry-time=\"20000101\",expiry-time=\"20991231\"",
            "programs=\"id\",programs=\"sh\"",
            "max-jobs=1,Max-Jobs=50",
            "from=\"10.0.0.0/8\",from=\"0.0.0.0/0\"",
            "no-env,no-env",
        ] {
            let e = parse_options(twice).unwrap_err().to_string();
            assert!(e.contains("given twice"), "{twice}: {e}");
        }
    }

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point: every "signature" with R = identity, S = 0
        // verifies under it.
        let mut point = [0u8; 32];
        point[0] = 1;
        let weak = PublicKey::from(ssh_key::public::KeyData::Ed25519(
            ssh_key::public::Ed25519PublicKey(point),
        ));
        let line = weak.to_openssh().unwrap();
        let e = format!("{:#}", keys(&format!("{line} weak\n")).unwrap_err());
        assert!(e.contains("small-order"), "{e}");
        assert!(super::super::Presented::parse(&line).is_none());
    }

    #[test]
    fn restrict_then_pty_keeps_the_terminal() {
        let r = parse_options("restrict,pty").unwrap();
        assert!(r.no_env && r.no_cwd && !r.no_pty);
        let e = format!("{:#}", parse_options("pty,no-pty").unwrap_err());
        assert!(e.contains("contradict"), "{e}");
    }

    #[test]
    fn names_the_server_gives_are_reserved() {
        for name in ["none", "unknown", "token:abc", "None", "TOKEN:x"] {
            let e = format!("{:#}", keys(&format!("{KEY_A} {name}\n")).unwrap_err());
            assert!(e.contains("reserved"), "{name}: {e}");
        }
        assert!(keys(&format!("{KEY_A} token-holder\n")).is_ok());
        for spoof in ["ali\u{202e}ec", "a\u{200b}b", "a\u{2028}b"] {
            let e = format!("{:#}", keys(&format!("{KEY_A} {spoof}\n")).unwrap_err());
            assert!(e.contains("invisible"), "{e}");
        }
    }

    #[test]
    fn expiry_is_local_time_and_exclusive() {
        let r = parse_options("expiry-time=\"20200101\"").unwrap();
        let e = r.expiry.unwrap();
        assert!(r.expired(e) && !r.expired(e - 1));
        assert!(
            parse_options("expiry-time=\"99991231\"")
                .unwrap()
                .expiry
                .unwrap()
                > 0
        );
    }

    #[test]
    fn principals_one_per_line_with_options() {
        let p = parse_principals("alice\nno-pty,max-connections=1 ops\n", Path::new("ap")).unwrap();
        assert_eq!(p[0].name, "alice");
        assert!(p[1].restrictions.no_pty);
        assert_eq!(p[1].restrictions.max_connections, Some(1));
        assert!(parse_principals("a b\n", Path::new("ap")).is_err());
        assert!(parse_principals("a\na\n", Path::new("ap")).is_err());
    }

    #[test]
    fn cidrs_match_by_family_and_prefix() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let all6 = Cidr::parse("::/0").unwrap();
        assert!(all6.contains("::1".parse().unwrap()));
        assert!(!all6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("1.2.3.4/33").is_err());
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains("10.9.8.7".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("::ffff:0:0/96")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("::ffff:0:0/95").is_err());
    }
}

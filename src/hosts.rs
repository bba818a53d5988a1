//! Host lists for fan-out, in the pdsh/ClusterShell style.
//!
//! ```text
//! HOSTS   = ITEM ("," ITEM)*          commas inside [...] belong to a range
//! ITEM    = "@" FILE                  one ITEM per line, # comments
//!         | [SCHEME "://"] PATTERN [":" PORT-PATTERN]
//! PATTERN = text with groups "[" RANGE ("," RANGE)* "]"
//! RANGE   = N | N "-" M               zero padding kept: [01-10] -> 01 .. 10
//! ```
//!
//! `node[01-03]:8080` is node01:8080, node02:8080, node03:8080;
//! `10.0.0.[1-2]:[8080,8443]` is four endpoints. The port defaults to 8080.

use anyhow::{Context, bail};

use crate::endpoint::{Endpoint, Transport};

/// Largest expansion accepted, so a typo cannot ask for millions of hosts.
pub const MAX_HOSTS: usize = 100_000;

/// How deep `@file` may include `@file`: a file that includes itself
/// is an error, not a stack overflow.
const MAX_FILE_DEPTH: usize = 8;

/// The largest host file read (a typo such as `@/dev/zero` is an error,
/// not a process that grows until it is killed).
pub const MAX_HOST_FILE: u64 = 16 << 20;

/// Expands a host list into `HOST:PORT` strings (with `tls://` kept when
/// given), in order, without duplicates.
pub fn expand(spec: &str, default_port: u16) -> anyhow::Result<Vec<String>> {
    let mut hosts = Hosts::default();
    hosts.expand(spec, default_port, 0)?;
    if hosts.list.is_empty() {
        bail!("no hosts in {spec:?}");
    }
    Ok(hosts.list)
}

/// The hosts so far, in order, and a set to keep them unique in O(1).
#[derive(Default)]
struct Hosts {
    list: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl Hosts {
    fn expand(&mut self, spec: &str, default_port: u16, depth: usize) -> anyhow::Result<()> {
        for item in split_top(spec) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if let Some(file) = item.strip_prefix('@') {
                if depth >= MAX_FILE_DEPTH {
                    bail!(
                        "host files nest deeper than {MAX_FILE_DEPTH} at {file} (does one include itself?)"
                    );
                }
                for line in read_host_file(file)?.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() {
                        self.expand(line, default_port, depth + 1)?;
                    }
                }
                continue;
            }
            let (scheme, rest) = match item.split_once("://") {
                Some((s, r)) => (format!("{s}://"), r),
                None => (String::new(), item),
            };
            for h in expand_pattern(rest)? {
                // Each host through the clients' one address parser: a bad
                // port or host is an error, never a host that cannot be
                // reached.
                let full = format!("{scheme}{h}");
                let (transport, host, port) = Endpoint::parse_client(&full, default_port)?;
                let host_port = Endpoint::new(Transport::Tcp, host, port).host_port();
                self.push(match transport {
                    Some(Transport::Tls) => format!("tls://{host_port}"),
                    Some(Transport::Udp) => {
                        bail!("{full:?}: exec speaks tcp:// and tls://, not udp://")
                    }
                    Some(Transport::Tcp) | None => host_port,
                })?;
            }
        }
        Ok(())
    }

    fn push(&mut self, h: String) -> anyhow::Result<()> {
        if !self.seen.contains(&h) {
            if self.list.len() >= MAX_HOSTS {
                bail!("more than {MAX_HOSTS} hosts");
            }
            self.seen.insert(h.clone());
            self.list.push(h);
        }
        Ok(())
    }
}

/// A host file: a regular file of at most [`MAX_HOST_FILE`] bytes.
fn read_host_file(file: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read host file {file}"))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        bail!("host file {file} is not a regular file");
    }
    let mut text = String::new();
    f.take(MAX_HOST_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read host file {file}"))?;
    if text.len() as u64 > MAX_HOST_FILE {
        bail!("host file {file} is larger than {MAX_HOST_FILE} bytes");
    }
    Ok(text)
}

/// `hosts` without those `spec` names (expanded the same way, so
/// `node[05-07]` leaves out node05:8080 .. node07:8080); none left is an
/// error.
pub fn exclude(hosts: Vec<String>, spec: &str, default_port: u16) -> anyhow::Result<Vec<String>> {
    // A host is left out whichever scheme either list gives it.
    let bare = |h: &str| h.strip_prefix("tls://").unwrap_or(h).to_string();
    let gone: std::collections::HashSet<String> = expand(spec, default_port)?
        .iter()
        .map(|h| bare(h))
        .collect();
    let out: Vec<String> = hosts
        .into_iter()
        .filter(|h| !gone.contains(&bare(h)))
        .collect();
    if out.is_empty() {
        bail!("--exclude {spec:?} leaves no hosts");
    }
    Ok(out)
}

/// The inverse of [`expand`] for display, as ClusterShell folds: hosts
/// that differ only in their last number become one range,
/// `node01:8080,node02:8080,node03:8080,node07:8080` ->
/// `node[01-03,07]:8080`. Zero padding is kept (numbers of different
/// widths are not joined); groups come in order of first appearance, then
/// the hosts without a number.
pub fn fold<S: AsRef<str>>(hosts: &[S]) -> String {
    // (prefix, suffix, width) -> numbers; the groups in order of first
    // appearance, found through an index (10^5 hosts fold in one pass).
    type Key = (String, String, usize);
    let mut groups: Vec<(Key, Vec<u64>)> = Vec::new();
    let mut index: std::collections::HashMap<Key, usize> = std::collections::HashMap::new();
    let mut plain: Vec<String> = Vec::new();
    for h in hosts {
        let h = h.as_ref();
        // The host part ends at the port's colon (after any IPv6 bracket).
        let host_end = match h.rfind(']') {
            Some(b) => b + 1,
            None => h.rfind(':').unwrap_or(h.len()),
        };
        let host = h.get(..host_end).unwrap_or(h);
        let digits_end = host.rfind(|c: char| c.is_ascii_digit()).map(|p| p + 1);
        let number = digits_end.and_then(|end| {
            let start = host
                .get(..end)?
                .rfind(|c: char| !c.is_ascii_digit())
                .map_or(0, |p| p + 1);
            let digits = host.get(start..end)?;
            // Dotted addresses fold on their last byte only.
            Some((start, end, digits.parse::<u64>().ok()?))
        });
        match number {
            Some((start, end, n)) if !host.contains('[') => {
                let key = (
                    h.get(..start).unwrap_or("").to_string(),
                    h.get(end..).unwrap_or("").to_string(),
                    end - start,
                );
                match index.get(&key) {
                    Some(&g) => groups.get_mut(g).into_iter().for_each(|(_, ns)| ns.push(n)),
                    None => {
                        index.insert(key.clone(), groups.len());
                        groups.push((key, vec![n]));
                    }
                }
            }
            _ => plain.push(h.to_string()),
        }
    }
    let mut parts: Vec<String> = groups
        .into_iter()
        .map(|((prefix, suffix, width), mut ns)| {
            ns.sort_unstable();
            ns.dedup();
            // Runs of consecutive numbers, as (first, last).
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for n in ns {
                match runs.last_mut() {
                    Some((_, last)) if last.checked_add(1) == Some(n) => *last = n,
                    _ => runs.push((n, n)),
                }
            }
            if let [(n, m)] = runs.as_slice()
                && n == m
            {
                return format!("{prefix}{n:0width$}{suffix}");
            }
            let ranges: Vec<String> = runs
                .iter()
                .map(|&(n, m)| {
                    if n == m {
                        format!("{n:0width$}")
                    } else {
                        format!("{n:0width$}-{m:0width$}")
                    }
                })
                .collect();
            format!("{prefix}[{}]{suffix}", ranges.join(","))
        })
        .collect();
    parts.extend(plain);
    parts.join(",")
}

/// Splits on commas outside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s.get(start..).unwrap_or(""));
    parts
}

/// Expands every `[...]` group of a pattern (IPv6 `[::1]` is left alone:
/// a group must hold only digits, commas and dashes).
fn expand_pattern(p: &str) -> anyhow::Result<Vec<String>> {
    let mut results = vec![String::new()];
    let mut rest = p;
    while let Some(open) = rest.find('[') {
        let close = rest
            .get(open..)
            .and_then(|r| r.find(']'))
            .map(|c| c + open)
            .with_context(|| format!("unclosed [ in {p:?}"))?;
        let head = rest.get(..open).unwrap_or("");
        let body = rest.get(open + 1..close).unwrap_or("");
        let choices = if body
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        {
            expand_ranges(body).with_context(|| format!("bad range [{body}] in {p:?}"))?
        } else {
            // Not a range (an IPv6 literal): keep it as written.
            vec![format!("[{body}]")]
        };
        if results.len().saturating_mul(choices.len()) > MAX_HOSTS {
            bail!("{p:?} expands to more than {MAX_HOSTS} hosts");
        }
        results = results
            .iter()
            .flat_map(|r| choices.iter().map(move |c| format!("{r}{head}{c}")))
            .collect();
        rest = rest.get(close + 1..).unwrap_or("");
    }
    Ok(results.into_iter().map(|r| format!("{r}{rest}")).collect())
}

fn expand_ranges(body: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for part in body.split(',') {
        match part.split_once('-') {
            None => {
                if part.is_empty() {
                    bail!("empty element");
                }
                out.push(part.to_string());
            }
            Some((a, b)) => {
                let width = a.len();
                let (lo, hi): (u64, u64) = (a.parse()?, b.parse()?);
                if lo > hi {
                    bail!("{lo} > {hi}");
                }
                if hi - lo >= MAX_HOSTS as u64 {
                    bail!("range too large");
                }
                for n in lo..=hi {
                    out.push(format!("{n:0width$}"));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lists_and_padding() {
        assert_eq!(
            expand("node[01-03]", 8080).unwrap(),
            ["node01:8080", "node02:8080", "node03:8080"]
        );
        assert_eq!(
            expand("a,b:9,c[1,3-4]:7", 8080).unwrap(),
            ["a:8080", "b:9", "c1:7", "c3:7", "c4:7"]
        );
        assert_eq!(
            expand("10.0.0.[1-2]:[80,443]", 8080).unwrap(),
            ["10.0.0.1:80", "10.0.0.1:443", "10.0.0.2:80", "10.0.0.2:443"]
        );
        assert_eq!(
            expand("[::1]:9,tls://h[8-9]", 1).unwrap(),
            ["[::1]:9", "tls://h8:1", "tls://h9:1"]
        );
        assert_eq!(expand("a,a", 1).unwrap(), ["a:1"]);
    }

    #[test]
    fn bad_lists_are_errors() {
        for bad in [
            "",
            "n[1-",
            "n[3-1]",
            "n[1-9999999]",
            "n[1--2]",
            "n[,]",
            // Through the clients' address parser: ports, hosts, schemes.
            "n[1-2]:99999",
            ":8080",
            "http://n1",
            "udp://n1",
            "n 1",
            "n1:[1-2]x",
        ] {
            assert!(expand(bad, 1).is_err(), "{bad}");
        }
        assert_eq!(
            expand("tcp://a,tls://b:9,[::1]", 8080).unwrap(),
            ["a:8080", "tls://b:9", "[::1]:8080"]
        );
    }

    #[test]
    fn host_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(&f, "# cluster\nnode[1-2]:5\n\nother # trailing\n").unwrap();
        assert_eq!(
            expand(&format!("@{},x", f.display()), 8080).unwrap(),
            ["node1:5", "node2:5", "other:8080", "x:8080"]
        );
    }

    #[test]
    fn exclusions_use_the_same_syntax() {
        let all = expand("node[01-10]", 8080).unwrap();
        let left = exclude(all.clone(), "node[02-09],node01:9", 8080).unwrap();
        assert_eq!(left, ["node01:8080", "node10:8080"]);
        assert!(exclude(all, "node[01-10]", 8080).is_err());
    }

    #[test]
    fn folding_undoes_expanding() {
        let hosts = expand("node[01-03,07]:8080,db1,x", 8080).unwrap();
        assert_eq!(fold(&hosts), "node[01-03,07]:8080,db1:8080,x:8080");
        let hosts = expand("10.0.0.[1-4]:[8080,8443],[::1]:1", 8080).unwrap();
        assert_eq!(fold(&hosts), "10.0.0.[1-4]:8080,10.0.0.[1-4]:8443,[::1]:1");
        assert_eq!(fold(&["n9:1", "n10:1", "n11:1"]), "n9:1,n[10-11]:1");
        assert_eq!(
            expand(&fold(&expand("a[1-5]", 1).unwrap()), 1)
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn host_files_that_include_themselves_or_are_huge_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("loop");
        std::fs::write(&f, format!("a\n@{}\n", f.display())).unwrap();
        let e = expand(&format!("@{}", f.display()), 1).unwrap_err();
        assert!(e.to_string().contains("nest deeper"), "{e}");
        let e = expand("@/dev/zero", 1).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn exclusions_ignore_the_scheme_and_folding_leaves_brackets_alone() {
        let all = expand("tls://n1,n2", 8080).unwrap();
        assert_eq!(exclude(all, "n1", 8080).unwrap(), ["n2:8080"]);
        let v6 = ["tls://[::1]:1", "tls://[::2]:1"];
        assert_eq!(fold(&v6), "tls://[::1]:1,tls://[::2]:1");
    }
}

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

/// Expands a host list into `HOST:PORT` strings (with `tls://` kept when
/// given), in order, without duplicates.
pub fn expand(spec: &str, default_port: u16) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for item in split_top(spec) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some(file) = item.strip_prefix('@') {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read host file {file}"))?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if !line.is_empty() {
                    for h in expand(line, default_port)? {
                        push(&mut out, h)?;
                    }
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
            // port or host is an error, never a host that cannot be reached.
            let full = format!("{scheme}{h}");
            let (transport, host, port) = Endpoint::parse_client(&full, default_port)?;
            let host_port = Endpoint::new(Transport::Tcp, host, port).host_port();
            push(
                &mut out,
                match transport {
                    Some(Transport::Tls) => format!("tls://{host_port}"),
                    Some(Transport::Udp) => {
                        bail!("{full:?}: exec speaks tcp:// and tls://, not udp://")
                    }
                    Some(Transport::Tcp) | None => host_port,
                },
            )?;
        }
    }
    if out.is_empty() {
        bail!("no hosts in {spec:?}");
    }
    Ok(out)
}

fn push(out: &mut Vec<String>, h: String) -> anyhow::Result<()> {
    if !out.contains(&h) {
        if out.len() >= MAX_HOSTS {
            bail!("more than {MAX_HOSTS} hosts");
        }
        out.push(h);
    }
    Ok(())
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
}

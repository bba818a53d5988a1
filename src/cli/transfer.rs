//! `switchboard put` and `switchboard get` (PROTOCOL.md §3.8): scp's
//! commands over one exec connection, with destination rules that never
//! surprise, trees (`-r`), kept modes and times (`-p`), `--resume` and
//! `--json`. The file-by-file work is [`crate::client::transfer`].
//!
//! ```text
//! put [ADDR] SRC... DEST    DEST an existing directory: SRC goes inside it
//! get [ADDR] SRC... DEST    DEST/ not a directory, or several SRCs and
//!                           DEST not one: an error; a file never
//!                           replaces a directory, nor the reverse
//! ```

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;

use super::TransferArgs;
use super::input::{Target, split_target};
use crate::client::exec::EXIT_CONNECTION;
use crate::client::transfer::{Got, Put};
use crate::client::{ClientAuth, ClientError, ExecClient};
use crate::config::DEFAULT_EXEC_PORT;
use crate::endpoint::Transport;
use crate::proto::transfer::{EntryKind, PutRequest};

/// What the words say: the server (or `--hosts`), the sources, the
/// destination.
pub(super) struct Plan {
    target: Target,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) sources: Vec<String>,
    pub(super) dest: String,
}

/// `[ADDR] SRC... DEST`: with three words or more, the first is the
/// address when it looks like one; with `--hosts`, no address.
fn plan(args: &TransferArgs) -> anyhow::Result<Plan> {
    if args.args.len() < 2 {
        bail!("give [ADDR] SRC... DEST");
    }
    if let Some(hosts) = args.fan.expand()? {
        let mut words = args.args.clone();
        let dest = words.pop().unwrap_or_default();
        return Ok(Plan {
            target: Target::address(&format!("127.0.0.1:{DEFAULT_EXEC_PORT}"), DEFAULT_EXEC_PORT)?,
            hosts: Some(hosts),
            sources: words,
            dest,
        });
    }
    let target = if args.args.len() >= 3 {
        split_target(args.args.clone(), DEFAULT_EXEC_PORT)?
    } else {
        Target::address(&format!("127.0.0.1:{DEFAULT_EXEC_PORT}"), DEFAULT_EXEC_PORT).map(|t| {
            Target {
                words: args.args.clone(),
                ..t
            }
        })?
    }
    .speaking("put/get", &[Transport::Tcp, Transport::Tls])?;
    let mut words = target.words.clone();
    let Some(dest) = words.pop() else {
        bail!("give SRC... DEST");
    };
    if words.is_empty() {
        bail!("give SRC... DEST (after the address)");
    }
    Ok(Plan {
        sources: words,
        dest,
        target,
        hosts: None,
    })
}

/// The output window a `get` gives (4 MiB, where a job's is 1 MiB): a
/// copy's speed is the window over the time its give-back takes to come
/// round, and a get holds one file's data, not a terminal's.
pub(super) const OUTPUT_WINDOW: u64 = 4 << 20;

/// Connects as `exec` does, with the windows transfers need.
fn connect(
    args: &TransferArgs,
    target: &Target,
    rt: &tokio::runtime::Runtime,
) -> Result<ExecClient, ExitCode> {
    let connected = (|| {
        let auth = ClientAuth {
            window: true,
            output_window: Some(OUTPUT_WINDOW),
            ..args.conn.auth()?
        };
        let tls = match target.transport {
            Some(Transport::Tls) => Some(args.conn.client_tls(&target.addr)?),
            _ => None,
        };
        rt.block_on(args.conn.connect(&target.addr, tls.as_ref(), &auth))
            .map_err(anyhow::Error::from)
    })();
    match connected {
        Ok(c) => {
            if let Some(first) = c.first_use() {
                super::tell_first_use(&target.addr, first);
            }
            Ok(c)
        }
        Err(e) => {
            say!("switchboard: {e:#}");
            Err(ExitCode::from(EXIT_CONNECTION))
        }
    }
}

/// How the copies went: each file said once, as a line or a JSON record
/// (with its host, in fan-out); progress bars on a terminal.
struct Report {
    json: bool,
    failed: usize,
    host: Option<String>,
    /// With `--hosts`: the host's wave (`--batch`), in each record.
    wave: Option<usize>,
    bars: Option<Bars>,
}

/// Progress on a terminal (never in a pipe, nor with `--json` or
/// `--hosts`): a bar per file and one for the whole run, with rates and
/// times left.
struct Bars {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
}

impl Bars {
    fn new(args: &TransferArgs) -> Option<Bars> {
        use std::io::IsTerminal;
        if args.json || args.fan.hosts.is_some() || !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = indicatif::MultiProgress::new();
        let total = multi.add(indicatif::ProgressBar::new(0));
        total.set_style(
            indicatif::ProgressStyle::with_template(
                "total {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(Bars { multi, total })
    }
}

impl Drop for Bars {
    /// The whole run's bar stays, at its end, as the last word.
    fn drop(&mut self) {
        self.total.finish();
    }
}

/// One file's bar, fed by the client's progress calls.
struct Watch {
    bar: indicatif::ProgressBar,
    total: indicatif::ProgressBar,
    seen: std::sync::atomic::AtomicU64,
    sized: std::sync::atomic::AtomicBool,
}

impl Watch {
    fn see(&self, at: u64, size: u64) {
        use std::sync::atomic::Ordering;
        if !self.sized.swap(true, Ordering::Relaxed) {
            self.bar.set_length(size);
            self.total.inc_length(size);
        }
        self.bar.set_position(at);
        let before = self.seen.swap(at, Ordering::Relaxed);
        self.total.inc(at.saturating_sub(before));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Report {
    fn new(args: &TransferArgs, host: Option<String>) -> Report {
        Report {
            json: args.json,
            failed: 0,
            wave: None,
            bars: if host.is_none() {
                Bars::new(args)
            } else {
                None
            },
            host,
        }
    }

    /// A bar for the file `name`, on a terminal.
    fn watch(&self, name: &str) -> Option<Watch> {
        let b = self.bars.as_ref()?;
        let bar = b
            .multi
            .insert_before(&b.total, indicatif::ProgressBar::new(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:30!} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(name.to_string());
        Some(Watch {
            bar,
            total: b.total.clone(),
            seen: std::sync::atomic::AtomicU64::new(0),
            sized: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn put(&mut self, source: &Path, r: &Put) {
        if self.json {
            let s = &r.stored;
            self.record(json!({
                "direction": "put", "source": source, "path": s.path, "bytes": s.bytes,
                "sent": r.sent, "sha256": s.sha256, "skipped": s.skipped,
                "resumed_from": s.resumed_from, "ok": true,
            }));
        }
    }

    fn got(&mut self, source: &str, g: &Got) {
        if self.json {
            self.record(json!({
                "direction": "get", "source": source, "path": g.path, "bytes": g.bytes,
                "received": g.received, "sha256": g.sha256, "resumed_from": g.resumed_from,
                "ok": true,
            }));
        }
    }

    fn made(&mut self, direction: &str, source: &str, path: &str) {
        if self.json {
            self.record(
                json!({"direction": direction, "source": source, "path": path, "ok": true}),
            );
        }
    }

    /// A file that could not be copied: said, counted, and the rest go on.
    fn failed(&mut self, direction: &str, source: &str, e: &anyhow::Error) {
        self.failed += 1;
        let (code, message) = match e.downcast_ref::<ClientError>() {
            Some(ClientError::Job { code, message, .. }) => (code.as_str(), message.clone()),
            _ => ("local", format!("{e:#}")),
        };
        if self.json {
            self.record(json!({
                "direction": direction, "source": source, "ok": false,
                "error": code, "message": message,
            }));
        }
        match &self.host {
            Some(h) => say!("switchboard: {h}: {direction} {source}: {message}"),
            None => say!("switchboard: {direction} {source}: {message}"),
        }
    }

    fn record(&self, mut v: serde_json::Value) {
        if let Some(h) = &self.host {
            v["host"] = json!(h);
        }
        if let Some(w) = self.wave {
            v["wave"] = json!(w);
        }
        let _ = writeln!(std::io::stdout(), "{v}");
    }

    fn skipped(&mut self, what: &Path) {
        say!(
            "switchboard: {}: not a file, directory or link; skipped",
            what.display()
        );
    }

    fn code(&self) -> ExitCode {
        ExitCode::from(u8::from(self.failed > 0))
    }
}

/// The progress call for a file's bar, if it has one.
fn watched(w: &Option<Watch>) -> Option<Box<crate::client::transfer::Progress<'_>>> {
    w.as_ref().map(|w| {
        Box::new(move |at, size| w.see(at, size)) as Box<crate::client::transfer::Progress<'_>>
    })
}

/// A failure that ends the whole run (the connection is gone), as opposed
/// to one file's (the server's refusal, or a file on this side).
fn fatal(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(e) if !matches!(e, ClientError::Job { .. } | ClientError::Local(_))
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// A local path's last name, for a destination directory to receive it
/// under (`.` and `..` by the directory's own name).
pub(super) fn own_name(p: &Path) -> anyhow::Result<String> {
    let name = match p.file_name() {
        Some(n) => n.to_owned(),
        None => std::fs::canonicalize(p)
            .with_context(|| p.display().to_string())?
            .file_name()
            .map(ToOwned::to_owned)
            .unwrap_or_default(),
    };
    name.into_string()
        .map_err(|n| anyhow::anyhow!("{}: the name is not UTF-8", Path::new(&n).display()))
}

/// A remote path's last name.
fn remote_name(p: &str) -> anyhow::Result<String> {
    match p.trim_end_matches('/').rsplit('/').next() {
        Some(n) if !n.is_empty() && n != "." && n != ".." => Ok(n.to_string()),
        _ => bail!("{p}: say which file or directory (a name, not / . or ..)"),
    }
}

pub fn put(args: TransferArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    // Every source is checked before anything is sent.
    for s in &plan.sources {
        let meta = std::fs::metadata(s).with_context(|| s.clone())?;
        if meta.is_dir() && !args.recursive {
            bail!("{s}: a directory (-r copies directories)");
        }
    }
    if args.relay {
        return super::relay::put(args, plan);
    }
    if plan.hosts.is_some() {
        return fan_out(args, plan, true);
    }
    let rt = runtime()?;
    let mut client = match connect(&args, &plan.target, &rt) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut report = Report::new(&args, None);
    let many = plan.sources.len() > 1;
    for s in &plan.sources {
        let src = Path::new(s);
        let done = rt.block_on(put_one(
            &mut client,
            &args,
            src,
            &plan.dest,
            many,
            &mut report,
        ));
        if let Err(e) = done {
            report.failed("put", s, &e);
            if fatal(&e) {
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        }
    }
    Ok(report.code())
}

/// The request for a local entry, without where it goes.
pub(super) fn entry_request(
    meta: &std::fs::Metadata,
    kind: EntryKind,
    args: &TransferArgs,
) -> PutRequest {
    PutRequest {
        id: 0,
        path: String::new(),
        base: None,
        name: None,
        kind,
        size: if kind == EntryKind::File {
            meta.len()
        } else {
            0
        },
        mode: Some(meta.permissions().mode() & 0o7777),
        mtime: Some(meta.mtime()),
        target: None,
        many: false,
        resume: args.resume,
        preserve: args.preserve,
        relay: Vec::new(),
    }
}

async fn put_one(
    client: &mut ExecClient,
    args: &TransferArgs,
    src: &Path,
    dest: &str,
    many: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    // A source named on the command line is followed if a link, as cp
    // and scp do; links inside a tree are copied as links.
    let meta = std::fs::metadata(src).with_context(|| src.display().to_string())?;
    let name = own_name(src)?;
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    let req = PutRequest {
        path: dest.to_string(),
        name: Some(name),
        many,
        ..entry_request(&meta, kind, args)
    };
    let top = client
        .put_entry(
            req,
            (kind == EntryKind::File).then_some(src),
            watched(&report.watch(&src.display().to_string())).as_deref(),
        )
        .await?;
    let shown = src.display().to_string();
    if kind == EntryKind::File {
        report.put(src, &top);
        return Ok(());
    }
    report.made("put", &shown, &top.stored.path);
    let base = top.stored.path.clone();
    let mut entries = Vec::new();
    walk_local(src, "", &mut entries)?;
    for (rel, path, meta) in entries {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_file() {
            EntryKind::File
        } else {
            report.skipped(&path);
            continue;
        };
        let mut req = PutRequest {
            path: rel.clone(),
            base: Some(base.clone()),
            ..entry_request(&meta, kind, args)
        };
        if kind == EntryKind::Symlink {
            let t = std::fs::read_link(&path).with_context(|| path.display().to_string())?;
            req.target = Some(
                t.into_os_string()
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("{}: link target not UTF-8", path.display()))?,
            );
        }
        let source = (kind == EntryKind::File).then_some(path.as_path());
        let watch = report.watch(&path.display().to_string());
        match client
            .put_entry(req, source, watched(&watch).as_deref())
            .await
        {
            Ok(p) if kind == EntryKind::File => report.put(&path, &p),
            Ok(p) => report.made("put", &path.display().to_string(), &p.stored.path),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if fatal(&e) {
                    return Err(e);
                }
                report.failed("put", &path.display().to_string(), &e);
            }
        }
    }
    Ok(())
}

/// A local tree's entries, depth first, parents before what they hold,
/// links not followed: (path relative to the top, path, metadata).
fn walk_local(
    dir: &Path,
    rel: &str,
    out: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .collect::<Result<_, _>>()
        .with_context(|| dir.display().to_string())?;
    names.sort_by_key(std::fs::DirEntry::file_name);
    for e in names {
        let Ok(name) = e.file_name().into_string() else {
            say!(
                "switchboard: {}: the name is not UTF-8; skipped",
                e.path().display()
            );
            continue;
        };
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).with_context(|| path.display().to_string())?;
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let is_dir = meta.is_dir();
        out.push((r.clone(), path.clone(), meta));
        if is_dir {
            walk_local(&path, &r, out)?;
        }
    }
    Ok(())
}

/// One host's run of a fan-out copy: how many files failed, or why the
/// host could not be reached.
struct HostOutcome {
    host: String,
    failed: usize,
    error: Option<String>,
    /// Not started (`--canary`, `--max-fail`), and why.
    skipped: Option<String>,
}

/// `put`/`get --hosts`: the same copy on every host, `--fanout` at a time,
/// as `exec --hosts` runs jobs; a summary on stderr; exit 0 only if every
/// host copied every file.
fn fan_out(args: TransferArgs, plan: Plan, put: bool) -> anyhow::Result<ExitCode> {
    let auth = ClientAuth {
        window: true,
        output_window: Some(OUTPUT_WINDOW),
        ..args.conn.auth()?
    };
    let hosts = plan.hosts.clone().unwrap_or_default();
    // A socket and the file being copied per host.
    let width = super::fanout::width_within_fds(args.fan.fanout, 2);
    let rollout = args.fan.rollout()?;
    let args = std::sync::Arc::new(args);
    let skip_args = args.clone();
    let plan = std::sync::Arc::new(plan);
    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let results = rt.block_on(super::fanout::run_rollout(
        &hosts,
        width,
        &rollout,
        move |host, place| {
            let (args, plan, auth) = (args.clone(), plan.clone(), auth.clone());
            async move { copy_host(host, place, &args, &plan, &auth, put).await }
        },
        move |host, place, why| {
            let label = host.strip_prefix("tls://").unwrap_or(&host).to_string();
            // A record for the host, so --json readers see it.
            let report = host_report(&skip_args, &label, place);
            report.host_failed(put, "skipped", &why);
            HostOutcome {
                host: label,
                failed: 0,
                error: None,
                skipped: Some(why),
            }
        },
        |r: &HostOutcome| r.error.is_some() || r.failed > 0 || r.skipped.is_some(),
    ))?;
    let (mut failed, mut skipped) = (Vec::new(), Vec::new());
    for r in &results {
        match (&r.skipped, &r.error, r.failed) {
            (Some(why), _, _) => skipped.push((r.host.as_str(), why.clone())),
            (None, Some(e), _) => failed.push((r.host.as_str(), e.clone())),
            (None, None, 0) => {}
            (None, None, n) => failed.push((r.host.as_str(), format!("{n} file(s) failed"))),
        }
    }
    super::fanout::summary(results.len(), &failed, &skipped);
    Ok(ExitCode::from(u8::from(
        !failed.is_empty() || !skipped.is_empty(),
    )))
}

/// The report of one host of `put`/`get --hosts`.
fn host_report(args: &TransferArgs, label: &str, place: super::fanout::Place) -> Report {
    let mut report = Report::new(args, Some(label.to_string()));
    report.wave = Some(place.wave);
    report
}

impl Report {
    /// A host that copied nothing: not reached, or not started (`why`
    /// under `error`: `connect` or `skipped`).
    fn host_failed(&self, put: bool, error: &str, message: &str) {
        if self.json {
            let direction = if put { "put" } else { "get" };
            let mut v =
                json!({"direction": direction, "ok": false, "error": error, "message": message});
            if error == "skipped" {
                v["skipped"] = json!(message);
            }
            self.record(v);
        }
    }
}

async fn copy_host(
    host: String,
    place: super::fanout::Place,
    args: &TransferArgs,
    plan: &Plan,
    auth: &ClientAuth,
    put: bool,
) -> HostOutcome {
    let label = host.strip_prefix("tls://").unwrap_or(&host).to_string();
    let mut outcome = HostOutcome {
        host: label.clone(),
        failed: 0,
        error: None,
        skipped: None,
    };
    let connected = async {
        let tls = match host.strip_prefix("tls://") {
            Some(a) => Some(args.conn.client_tls(a)?),
            None => None,
        };
        args.conn
            .connect(&label, tls.as_ref(), auth)
            .await
            .map_err(anyhow::Error::from)
    };
    let mut report = host_report(args, &label, place);
    let mut client = match connected.await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("{e:#}");
            report.host_failed(put, "connect", &e);
            outcome.error = Some(e);
            return outcome;
        }
    };
    let many = plan.sources.len() > 1;
    // get: DEST/<host>/ unless --name says how to name each file.
    let mut made = None;
    let dest = if put || args.name_template.is_some() {
        plan.dest.clone()
    } else {
        let d = Path::new(&plan.dest).join(&label);
        if !d.exists() {
            made = Some(d.clone());
        }
        if let Err(e) = std::fs::create_dir_all(&d) {
            outcome.error = Some(format!("{}: {e}", d.display()));
            return outcome;
        }
        d.display().to_string()
    };
    for s in &plan.sources {
        let r = if put {
            put_one(&mut client, args, Path::new(s), &dest, many, &mut report).await
        } else {
            let name_as = match (&args.name_template, remote_name(s)) {
                (Some(t), Ok(n)) => Some(t.replace("{host}", &label).replace("{name}", &n)),
                _ => None,
            };
            if let Some(n) = &name_as
                && (n.contains('/') || n.is_empty() || n == "." || n == "..")
            {
                report.failed(
                    "get",
                    s,
                    &anyhow::anyhow!("--name gives {n:?}, not a file name"),
                );
                continue;
            }
            get_one(
                &mut client,
                args,
                s,
                &dest,
                many,
                name_as.as_deref(),
                &mut report,
            )
            .await
        };
        if let Err(e) = r {
            report.failed(if put { "put" } else { "get" }, s, &e);
            if fatal(&e) {
                outcome.error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    outcome.failed = report.failed;
    // A host directory made for nothing (every get refused) is not left
    // behind; one holding anything stays (remove_dir removes only empty
    // ones).
    if let Some(d) = made {
        let _ = std::fs::remove_dir(d);
    }
    outcome
}

/// Where a fetched entry named `name` goes: inside `dest` if that is an
/// existing directory; `dest` itself otherwise, unless it ends in `/` or
/// several sources need a directory.
fn local_target(dest: &str, name: &str, many: bool) -> anyhow::Result<PathBuf> {
    let d = Path::new(dest);
    if d.is_dir() {
        return Ok(d.join(name));
    }
    if dest.ends_with('/') {
        bail!("{dest}: not an existing directory");
    }
    if many {
        bail!("{dest}: several sources need an existing directory");
    }
    Ok(d.to_path_buf())
}

pub fn get(args: TransferArgs) -> anyhow::Result<ExitCode> {
    if args.relay {
        bail!("--relay is for put");
    }
    let plan = plan(&args)?;
    let many = plan.sources.len() > 1;
    if (many || plan.hosts.is_some()) && !Path::new(&plan.dest).is_dir() {
        bail!(
            "{}: several sources, or --hosts, need an existing directory",
            plan.dest
        );
    }
    if plan.hosts.is_some() {
        return fan_out(args, plan, false);
    }
    let rt = runtime()?;
    let mut client = match connect(&args, &plan.target, &rt) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut report = Report::new(&args, None);
    for s in &plan.sources {
        let done = rt.block_on(get_one(
            &mut client,
            &args,
            s,
            &plan.dest,
            many,
            None,
            &mut report,
        ));
        if let Err(e) = done {
            report.failed("get", s, &e);
            if fatal(&e) {
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
        }
    }
    Ok(report.code())
}

/// `name_as`: the local name in `dest` (fan-out's `--name`), instead of
/// the destination rules.
async fn get_one(
    client: &mut ExecClient,
    args: &TransferArgs,
    src: &str,
    dest: &str,
    many: bool,
    name_as: Option<&str>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let name = remote_name(src)?;
    let top = match name_as {
        Some(n) => Path::new(dest).join(n),
        None => local_target(dest, &name, many)?,
    };
    // -r lists first: a tree, or a file got as without -r.
    let tree = if args.recursive {
        let (entries, skipped) = client.list(src).await?;
        if skipped > 0 {
            say!(
                "switchboard: {src}: {skipped} entries skipped on the server (special files, \
                 non-UTF-8 names, unreadable directories)"
            );
        }
        match entries.first() {
            None => bail!("{src}: nothing listed"),
            Some(first) if first.kind == EntryKind::File => None,
            Some(first) => Some((first.mode, entries)),
        }
    } else {
        None
    };
    let Some((top_mode, entries)) = tree else {
        if top.is_dir() {
            bail!("{}: a file never replaces a directory", top.display());
        }
        let got = client
            .get_file(
                src,
                None,
                &top,
                args.resume,
                args.preserve,
                watched(&report.watch(src)).as_deref(),
            )
            .await?;
        report.got(src, &got);
        return Ok(());
    };
    make_dir(&top, top_mode, args.preserve)?;
    report.made("get", src, &top.display().to_string());
    for e in entries.iter().skip(1) {
        let shown = format!("{}/{}", src.trim_end_matches('/'), e.path);
        let one: anyhow::Result<()> = async {
            let local = entry_path(&top, &e.path)?;
            match e.kind {
                EntryKind::Dir => {
                    make_dir(&local, e.mode, args.preserve)?;
                    report.made("get", &shown, &local.display().to_string());
                }
                EntryKind::Symlink => {
                    let target = e.target.clone().unwrap_or_default();
                    make_link(&local, &target)?;
                    report.made("get", &shown, &local.display().to_string());
                }
                EntryKind::File => {
                    if local.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                        bail!("{}: a file never replaces a directory", local.display());
                    }
                    let got = client
                        .get_file(
                            &e.path,
                            Some(src),
                            &local,
                            args.resume,
                            args.preserve,
                            watched(&report.watch(&shown)).as_deref(),
                        )
                        .await?;
                    report.got(&shown, &got);
                }
            }
            Ok(())
        }
        .await;
        if let Err(err) = one {
            if fatal(&err) {
                return Err(err);
            }
            report.failed("get", &shown, &err);
        }
    }
    Ok(())
}

/// Where a listed entry goes beneath `top`. The listing comes from the
/// server, which may lie (scp's CVE-2019-6111): the path must be names
/// only (no `..`, `.`, empty or leading `/`), and everything on the way
/// to it a real directory, never a link (one the listing itself made
/// would lead out of the tree).
fn entry_path(top: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let names: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || rel.contains('\0')
        || names
            .iter()
            .any(|n| n.is_empty() || *n == "." || *n == "..")
    {
        bail!("the server listed {rel:?}, not a path inside the tree; refused");
    }
    let mut p = top.to_path_buf();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            match p.symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                _ => bail!(
                    "{}: not a directory of the tree (a link?); {rel:?} refused",
                    p.display()
                ),
            }
        }
        p.push(n);
    }
    Ok(p)
}

/// A directory of a fetched tree: made if missing; an existing file in
/// its place is an error (a directory never replaces a file).
fn make_dir(path: &Path, mode: u32, preserve: bool) -> anyhow::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{}: a directory never replaces a file", path.display()),
        Err(_) => {
            std::fs::create_dir(path).with_context(|| path.display().to_string())?;
        }
    }
    if preserve {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// A link of a fetched tree, as it was (never resolved), replacing what
/// was there but a directory.
fn make_link(path: &Path, target: &str) -> anyhow::Result<()> {
    if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        bail!("{}: a link never replaces a directory", path.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("not a file name")?;
    let tmp = path.with_file_name(crate::proto::transfer::partial_name(name));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).with_context(|| path.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_cannot_lead_out_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        std::fs::create_dir_all(top.join("sub")).unwrap();
        std::os::unix::fs::symlink("/tmp", top.join("lnk")).unwrap();
        std::fs::write(top.join("file"), b"").unwrap();
        assert_eq!(
            entry_path(&top, "sub/x").unwrap(),
            top.join("sub").join("x")
        );
        assert_eq!(entry_path(&top, "lnk").unwrap(), top.join("lnk"));
        for bad in [
            "lnk/evil",
            "../evil",
            "/tmp/evil",
            "a//b",
            "./x",
            "",
            "file/x",
            "sub/../x",
        ] {
            assert!(entry_path(&top, bad).is_err(), "{bad:?}");
        }
    }
}

//! The command policy: what an authenticated client may run, and as whom.
//!
//! [`Policy::check`] is the one place a request is judged. A request it
//! refuses gets `forbidden` and nothing is spawned; a request it approves
//! comes back as the exact [`Command`] to run, with a bare program name
//! already resolved to an absolute path through the server's own PATH, so
//! the spawner cannot be steered by anything the request put in `env`.
//! Checks, in order: jobs as root (refused unless the operator said
//! `--allow-root` or named a `--run-as` user), shell jobs when only argv is
//! allowed, programs outside the allow-list, `env` overrides (all of them
//! when `allow_env` is off; by name against `accept_env` when there is an
//! allow-list or `accept_env` is set), `cwd` overrides when they are
//! forbidden, terminals (`pty`) when they are.
//!
//! An identity's `authorized_keys` options ([`Restrictions`]) narrow the
//! server's policy, in the same checks: its `programs=` is an allow-list
//! of its own (both lists must allow a program), `no-env`, `no-cwd` and
//! `no-pty` refuse what they name. Its `run-as=` picks the job user in
//! place of the server's `--run-as`.
//!
//! Why the environment is part of the allow-list: an allowed program is
//! only as narrow as the environment it starts in. `LD_PRELOAD` runs code
//! in any dynamically linked program, `BASH_ENV` and `BASH_FUNC_x%%` run
//! code in any bash, and a request's `PATH` would choose which file an
//! allowed bare name means. So with an allow-list, a request may set only
//! the variables `accept_env` names (default: none), and the program is
//! looked up in the server's PATH, never the request's.

use std::path::Path;

use nix::unistd::Uid;

pub use super::process::RunAs;
use crate::config::ExecConfig;
use crate::identity::Restrictions;
use crate::proto::{Command, ErrorCode, ExecRequest};

/// What the policy approved: the command exactly as it is to run, and
/// the user it runs as (`None`: the server's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    pub command: Command,
    pub run_as: Option<RunAs>,
}

/// The server's own PATH, fixed when the policy is built: the one bare
/// program names are looked up in.
pub fn server_search_path() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => p,
        _ => super::process::DEFAULT_PATH.into(),
    }
}

/// A shell's status for a command it cannot find, and for one it found
/// but cannot execute (POSIX "Command Search and Execution").
pub const EXIT_NOT_FOUND: i32 = 127;
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// What `cd DIR && cmd` gives when DIR cannot be entered, and a job gets
/// when anything else it needed before its program (its terminal) failed.
pub const EXIT_SETUP: i32 = 1;

/// Why a request is not run, and the error code it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `forbidden` (the policy says no) or `spawn_failed` (a bare program
    /// name that is not in the server's PATH).
    pub code: ErrorCode,
    pub message: String,
    /// For `spawn_failed`: the status a shell gives the same failure
    /// (PROTOCOL.md §3.3's `exit_status`).
    pub exit_status: Option<i32>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            exit_status: None,
        }
    }

    /// A program that could not be run, with the status a shell would give.
    pub fn spawn_failed(message: impl Into<String>, exit_status: i32) -> Refusal {
        Refusal {
            exit_status: Some(exit_status),
            ..Refusal::new(ErrorCode::SpawnFailed, message)
        }
    }

    fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Forbidden, message)
    }
}

/// The policy of one server.
#[derive(Debug, Clone)]
pub struct Policy {
    pub argv_only: bool,
    pub allowed_programs: Vec<String>,
    /// `accept_env` patterns (`*` and `?` wildcards).
    pub accept_env: Vec<String>,
    pub allow_env: bool,
    pub allow_cwd: bool,
    pub allow_pty: bool,
    pub run_as: Option<RunAs>,
    /// Jobs may run as root (the server is root and no run-as user is set).
    pub allow_root: bool,
    /// Jobs may run as root because only root can reach them
    /// ([`crate::exposure::root_jobs_without_asking`]): the token file that
    /// made it so, set by whoever builds the policy with the sockets in
    /// hand. Judged again at every root job, so a token made readable to
    /// others since turns root jobs off at once.
    pub root_token: Option<crate::secrets::RootToken>,
    /// Where bare program names are looked up: the server's PATH at start.
    pub search_path: String,
    /// Transfers only beneath these (`exec.files_root`).
    pub files_root: Vec<std::path::PathBuf>,
}

impl Policy {
    pub fn from_config(cfg: &ExecConfig) -> anyhow::Result<Policy> {
        let run_as = match &cfg.run_as {
            Some(name) => Some(RunAs::resolve(name)?),
            None => None,
        };
        Ok(Policy {
            argv_only: cfg.argv_only || !cfg.allowed_programs.is_empty(),
            allowed_programs: cfg.allowed_programs.clone(),
            accept_env: cfg.accept_env.clone(),
            allow_env: cfg.allow_env,
            allow_cwd: cfg.allow_cwd,
            allow_pty: cfg.allow_pty,
            run_as,
            allow_root: cfg.allow_root,
            root_token: None,
            search_path: server_search_path(),
            files_root: cfg.files_root.clone(),
        })
    }

    /// Whether jobs would run as root and that is not allowed.
    pub fn refuses_root(&self) -> bool {
        self.refuses_root_to(true)
    }

    /// [`refuses_root`](Self::refuses_root) for a connection that
    /// authenticated while root jobs were (`rule_at_auth`) or were not
    /// allowed by the exposure rule: a connection that got in without
    /// root's token (unauthenticated, or with a token since replaced) never
    /// gets root jobs from a reload that allows them to others.
    pub fn refuses_root_to(&self, rule_at_auth: bool) -> bool {
        self.refuses_root_for(rule_at_auth, &Restrictions::NONE)
    }

    /// [`refuses_root_to`](Self::refuses_root_to) for an identity, whose
    /// `run-as=` is a user of its own. Judged by the uid the job would get
    /// (a key's run-as, else the server's run_as, else the server's own),
    /// so `run_as = "root"` or another name for uid 0 needs --allow-root
    /// as the server's own root does. Only a job as the server's own user
    /// may have root from the exposure rule (the token only root can
    /// read): naming a user is asking for that user, not for the rule.
    fn refuses_root_for(&self, rule_at_auth: bool, who: &Restrictions) -> bool {
        let named = who.run_as.as_ref().or(self.run_as.as_ref());
        let root = named.map_or_else(|| Uid::effective().is_root(), |r| r.uid.is_root());
        root && !self.allow_root
            && !(named.is_none()
                && rule_at_auth
                && self
                    .root_token
                    .as_ref()
                    .is_some_and(crate::secrets::RootToken::holds))
    }

    /// [`refuses_root_for`](Self::refuses_root_for), as the refusal a
    /// request gets: jobs and transfers alike.
    fn root_allowed(&self, rule_at_auth: bool, who: &Restrictions) -> Result<(), Refusal> {
        if !self.refuses_root_for(rule_at_auth, who) {
            return Ok(());
        }
        Err(Refusal::forbidden(match (&who.run_as, &self.run_as) {
            (Some(r), _) => format!(
                "your key's run-as={:?} is root (uid 0): that needs the server's --allow-root",
                r.name
            ),
            (None, Some(r)) => format!(
                "the server's run_as {:?} is root (uid 0) and --allow-root is not given",
                r.name
            ),
            (None, None) => "the server runs as root and may not run jobs as root \
                 (start it with --run-as USER, or --allow-root)"
                .to_string(),
        }))
    }

    /// Judges a file transfer (PROTOCOL.md §3.8) of an identity with
    /// restrictions `who`: it runs as that identity's jobs would (the
    /// same user, the same refusal of root), beneath the directories the
    /// server's `files_root` and the key's `files=` allow; where exec is
    /// restricted (argv only, an allow-list, a key's `programs=`), only
    /// beneath such directories, since a file written anywhere could
    /// change what an allowed program does. `relay`: the transfer also
    /// makes this server connect to other hosts (§3.9), which is refused
    /// where exec is restricted, as a job that connects out would be.
    pub fn check_files(
        &self,
        rule_at_auth: bool,
        who: &Restrictions,
        relay: bool,
    ) -> Result<super::transfer::FilesApproved, Refusal> {
        self.root_allowed(rule_at_auth, who)?;
        let roots = match &who.files {
            None => self.files_root.clone(),
            Some(mine) if self.files_root.is_empty() => mine.clone(),
            Some(mine) => {
                if let Some(out) = mine
                    .iter()
                    .find(|d| !self.files_root.iter().any(|r| d.starts_with(r)))
                {
                    return Err(Refusal::forbidden(format!(
                        "your key's files={} is outside the server's files_root",
                        out.display()
                    )));
                }
                mine.clone()
            }
        };
        let restricted =
            self.argv_only || !self.allowed_programs.is_empty() || who.programs.is_some();
        if roots.is_empty() && restricted {
            return Err(Refusal::forbidden(
                "file transfers are off where exec is restricted: the server needs \
                 --files-root DIR (or the key files=\"DIR\")",
            ));
        }
        if relay && restricted {
            return Err(Refusal::forbidden(
                "relaying (this server connecting to other hosts) is off where exec is \
                 restricted",
            ));
        }
        let run_as = who.run_as.clone().or_else(|| self.run_as.clone());
        let home = match &run_as {
            Some(u) => u.home.clone(),
            None => nix::unistd::User::from_uid(Uid::effective())
                .ok()
                .flatten()
                .map_or_else(|| "/".to_string(), |u| u.dir.to_string_lossy().into_owned()),
        };
        Ok(super::transfer::FilesApproved {
            run_as,
            roots,
            home,
        })
    }

    /// What exec does with a job, for the banner and the reload log.
    pub fn jobs(&self) -> String {
        let refused = self.refuses_root();
        match &self.run_as {
            Some(r) if refused => format!(
                "jobs refused: run_as {:?} is root (uid 0); give --allow-root to run jobs as root",
                r.name
            ),
            Some(r) if r.uid.is_root() => format!("jobs run as {} (root)", r.name),
            Some(r) => format!("jobs run as {}", r.name),
            None if refused => "jobs refused: the server runs as root; give --run-as \
                 USER or --allow-root, or serve exec only on loopback addresses, with \
                 authentication and a token file only root can read"
                .to_string(),
            None => format!(
                "jobs run as {}",
                nix::unistd::User::from_uid(Uid::effective())
                    .ok()
                    .flatten()
                    .map_or_else(|| Uid::effective().to_string(), |u| u.name)
            ),
        }
    }

    /// Whether request `env` names are checked against `accept_env`: always
    /// under an allow-list (an empty `accept_env` then accepts nothing), and
    /// without one as soon as the operator wrote an `accept_env`.
    fn restricts_env(&self, who: &Restrictions) -> bool {
        !self.allowed_programs.is_empty() || who.programs.is_some() || !self.accept_env.is_empty()
    }

    /// Judges a request of an identity with restrictions `who`
    /// ([`Restrictions::NONE`] for the token, or no authentication).
    /// Approved, it returns the command to hand the spawner unchanged (a
    /// shell line as sent, or argv with a bare `argv[0]` replaced by its
    /// absolute path in the server's PATH) and the job's user.
    /// `rule_at_auth`: see [`refuses_root_to`](Self::refuses_root_to).
    pub fn check(
        &self,
        req: &ExecRequest,
        rule_at_auth: bool,
        who: &Restrictions,
    ) -> Result<Approved, Refusal> {
        self.root_allowed(rule_at_auth, who)?;
        match &req.command {
            Command::Shell(_) if self.argv_only || who.programs.is_some() => {
                return Err(Refusal::forbidden(
                    "shell commands are not allowed here; send argv",
                ));
            }
            Command::Argv(argv) => {
                let prog = argv.first().map(String::as_str).unwrap_or_default();
                if !self.allowed_programs.is_empty()
                    && !self.allowed_programs.iter().any(|p| p == prog)
                {
                    return Err(Refusal::forbidden(format!(
                        "program {prog:?} is not in the allow-list"
                    )));
                }
                if let Some(mine) = &who.programs
                    && !mine.iter().any(|p| p == prog)
                {
                    return Err(Refusal::forbidden(format!(
                        "program {prog:?} is not among your key's programs= ({})",
                        mine.join(",")
                    )));
                }
            }
            _ => {}
        }
        if !req.env.is_empty() {
            if !self.allow_env {
                return Err(Refusal::forbidden("env overrides are not allowed here"));
            }
            if who.no_env {
                return Err(Refusal::forbidden(
                    "env overrides are not allowed for your key (no-env)",
                ));
            }
            if self.restricts_env(who)
                && let Some(name) = req
                    .env
                    .keys()
                    .find(|k| !self.accept_env.iter().any(|p| wildcard_match(p, k)))
            {
                return Err(Refusal::forbidden(format!(
                    "environment variable {name:?} is not accepted here (exec.accept_env)"
                )));
            }
        }
        if req.cwd.is_some() {
            if !self.allow_cwd {
                return Err(Refusal::forbidden("cwd overrides are not allowed here"));
            }
            if who.no_cwd {
                return Err(Refusal::forbidden(
                    "cwd overrides are not allowed for your key (no-cwd)",
                ));
            }
        }
        if req.pty.is_some() {
            if !self.allow_pty {
                return Err(Refusal::forbidden(
                    "terminals are not allowed here (exec.allow_pty); run without -t",
                ));
            }
            if who.no_pty {
                return Err(Refusal::forbidden(
                    "terminals are not allowed for your key (no-pty, or a certificate \
                     without permit-pty); run without -t",
                ));
            }
        }
        let command = match &req.command {
            Command::Shell(line) => Command::Shell(line.clone()),
            Command::Argv(argv) => {
                let Some((prog, args)) = argv.split_first() else {
                    return Err(Refusal::new(ErrorCode::BadRequest, "argv is empty"));
                };
                let mut resolved = Vec::with_capacity(argv.len());
                resolved.push(self.resolve(prog)?);
                resolved.extend(args.iter().cloned());
                Command::Argv(resolved)
            }
        };
        Ok(Approved {
            command,
            run_as: who.run_as.clone().or_else(|| self.run_as.clone()),
        })
    }

    /// `prog` as the spawner must run it. A name with a slash is a path
    /// and stays as written (allow-list entries with one are absolute, see
    /// `ServerConfig::validate`); a bare name is looked up in the server's
    /// PATH, skipping empty and relative entries, which would resolve
    /// against the client-chosen cwd.
    fn resolve(&self, prog: &str) -> Result<String, Refusal> {
        if prog.contains('/') {
            return Ok(prog.to_string());
        }
        self.search_path
            .split(':')
            .filter(|dir| dir.starts_with('/'))
            .map(|dir| Path::new(dir).join(prog))
            .find(|p| is_executable(p))
            .map(|p| p.to_string_lossy().into_owned())
            .ok_or_else(|| {
                Refusal::spawn_failed(
                    format!("cannot run {prog:?}: not found in the server's PATH"),
                    EXIT_NOT_FOUND,
                )
            })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// OpenSSH-style pattern match (`AcceptEnv`): `*` is any run of
/// characters, `?` exactly one; everything else matches itself, case
/// sensitively. Linear in practice (greedy star with one backtrack point),
/// at worst pattern length times name length.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0usize, 0usize);
    // Where the last `*` was, and the name position it is matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            argv_only: false,
            allowed_programs: vec![],
            accept_env: vec![],
            allow_env: true,
            allow_cwd: true,
            allow_pty: true,
            run_as: None,
            allow_root: true,
            root_token: None,
            search_path: crate::server::exec::process::DEFAULT_PATH.into(),
            files_root: vec![],
        }
    }

    fn argv(words: &[&str]) -> ExecRequest {
        let mut r = ExecRequest::shell(1, "");
        r.command = Command::Argv(words.iter().map(|w| w.to_string()).collect());
        r
    }

    fn with_env(mut r: ExecRequest, k: &str) -> ExecRequest {
        r.env.insert(k.into(), "v".into());
        r
    }

    fn user(name: &str, uid: u32) -> RunAs {
        RunAs {
            name: name.into(),
            uid: Uid::from_raw(uid),
            gid: nix::unistd::Gid::from_raw(uid),
            groups: vec![],
            home: "/".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn uid_0_by_any_name_needs_allow_root() {
        let ls = argv(&["ls"]);
        let no_root = Policy {
            allow_root: false,
            ..policy()
        };
        for name in ["root", "toor"] {
            let p = Policy {
                run_as: Some(user(name, 0)),
                ..no_root.clone()
            };
            let e = p.check(&ls, true, &Restrictions::NONE).unwrap_err();
            assert!(e.message.contains("uid 0"), "{}", e.message);
            assert!(p.jobs().starts_with("jobs refused"), "{}", p.jobs());
            let mut key = Restrictions::default();
            key.run_as = Some(user(name, 0));
            let e = no_root.check(&ls, true, &key).unwrap_err();
            assert!(e.message.contains("your key's"), "{}", e.message);
            assert!(policy().check(&ls, true, &key).is_ok());
        }
        let p = Policy {
            run_as: Some(user("root", 0)),
            ..policy()
        };
        assert_eq!(p.jobs(), "jobs run as root (root)");
        let p = Policy {
            run_as: Some(user("nobody", 65534)),
            ..no_root.clone()
        };
        assert!(p.check(&ls, true, &Restrictions::NONE).is_ok());
    }

    #[test]
    fn each_rule_refuses_what_it_names() {
        let shell = ExecRequest::shell(1, "ls");
        let ls = argv(&["ls"]);
        assert!(policy().check(&shell, false, &Restrictions::NONE).is_ok());

        let p = Policy {
            argv_only: true,
            ..policy()
        };
        assert!(p.check(&shell, false, &Restrictions::NONE).is_err());
        assert!(p.check(&ls, false, &Restrictions::NONE).is_ok());

        let p = Policy {
            argv_only: true,
            allowed_programs: vec!["/bin/sh".into(), "true".into()],
            ..policy()
        };
        let refused = p.check(&ls, false, &Restrictions::NONE).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert!(refused.message.contains("allow-list"));
        assert!(
            p.check(&argv(&["true"]), false, &Restrictions::NONE)
                .is_ok()
        );
        assert!(
            p.check(
                &argv(&["/bin/sh", "-c", "true"]),
                false,
                &Restrictions::NONE
            )
            .is_ok()
        );

        assert!(
            Policy {
                allow_env: false,
                ..policy()
            }
            .check(&with_env(shell.clone(), "K"), false, &Restrictions::NONE)
            .is_err()
        );
        let mut with_cwd = shell.clone();
        with_cwd.cwd = Some("/".into());
        assert!(
            Policy {
                allow_cwd: false,
                ..policy()
            }
            .check(&with_cwd, false, &Restrictions::NONE)
            .is_err()
        );
        let mut with_pty = shell.clone();
        with_pty.pty = Some(Default::default());
        assert!(
            policy()
                .check(&with_pty, false, &Restrictions::NONE)
                .is_ok()
        );
        let refused = Policy {
            allow_pty: false,
            ..policy()
        }
        .check(&with_pty, false, &Restrictions::NONE)
        .unwrap_err();
        assert!(refused.message.contains("allow_pty"), "{refused:?}");
    }

    #[test]
    fn an_allow_list_accepts_only_the_environment_named_in_accept_env() {
        let listed = Policy {
            argv_only: true,
            allowed_programs: vec!["true".into()],
            ..policy()
        };
        for name in ["LD_PRELOAD", "BASH_ENV", "BASH_FUNC_x%%", "PATH", "LANG"] {
            let r = listed
                .check(&with_env(argv(&["true"]), name), false, &Restrictions::NONE)
                .unwrap_err();
            assert_eq!(r.code, ErrorCode::Forbidden, "{name}");
        }
        let accepting = Policy {
            accept_env: vec!["LC_*".into(), "LANG".into(), "SB_?".into()],
            ..listed.clone()
        };
        for ok in ["LANG", "LC_ALL", "LC_", "SB_1"] {
            assert!(
                accepting
                    .check(&with_env(argv(&["true"]), ok), false, &Restrictions::NONE)
                    .is_ok(),
                "{ok}"
            );
        }
        for no in ["LANGUAGE", "SB_12", "SB_", "LD_PRELOAD", "lang"] {
            assert!(
                accepting
                    .check(&with_env(argv(&["true"]), no), false, &Restrictions::NONE)
                    .is_err(),
                "{no}"
            );
        }
        // Without an allow-list: accept_env, once written, restricts every
        // request; left empty, allow_env alone decides.
        let open = policy();
        assert!(
            open.check(
                &with_env(argv(&["true"]), "LD_PRELOAD"),
                false,
                &Restrictions::NONE
            )
            .is_ok()
        );
        let narrowed = Policy {
            accept_env: vec!["LANG".into()],
            ..policy()
        };
        assert!(
            narrowed
                .check(
                    &with_env(ExecRequest::shell(1, "env"), "LANG"),
                    false,
                    &Restrictions::NONE
                )
                .is_ok()
        );
        assert!(
            narrowed
                .check(
                    &with_env(ExecRequest::shell(1, "env"), "LD_PRELOAD"),
                    false,
                    &Restrictions::NONE
                )
                .is_err()
        );
    }

    #[test]
    fn bare_names_resolve_through_the_servers_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("true");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Policy {
            search_path: format!("relative:::{}", dir.path().display()),
            ..policy()
        };
        // The request's PATH plays no part.
        let mut r = argv(&["true", "x"]);
        r.env.insert("PATH".into(), "/somewhere/else".into());
        assert_eq!(
            p.check(&r, false, &Restrictions::NONE).unwrap().command,
            Command::Argv(vec![fake.to_string_lossy().into_owned(), "x".into()])
        );
        let missing = p
            .check(&argv(&["no-such-program-here"]), false, &Restrictions::NONE)
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::SpawnFailed);
        // Paths are run as written; shell lines are untouched.
        assert_eq!(
            p.check(&argv(&["/bin/true"]), false, &Restrictions::NONE)
                .unwrap()
                .command,
            Command::Argv(vec!["/bin/true".into()])
        );
        assert_eq!(
            p.check(&ExecRequest::shell(1, "true"), false, &Restrictions::NONE)
                .unwrap()
                .command,
            Command::Shell("true".into())
        );
    }

    #[test]
    fn wildcards_match_like_openssh() {
        for (p, n, want) in [
            ("*", "", true),
            ("*", "ANY", true),
            ("", "", true),
            ("", "A", false),
            ("LC_*", "LC_ALL", true),
            ("LC_*", "LANG", false),
            ("A?C", "ABC", true),
            ("A?C", "AC", false),
            ("*X*Y", "aXbXcY", true),
            ("*X*Y", "aXbXcYz", false),
            ("a**b", "ab", true),
            ("?", "é", true),
        ] {
            assert_eq!(wildcard_match(p, n), want, "{p:?} {n:?}");
        }
    }
}

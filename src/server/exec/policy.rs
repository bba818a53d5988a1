//! The command policy: what an authenticated client may run, and as whom.
//!
//! A request the policy refuses gets `forbidden` and nothing is spawned.
//! Checks, in order: jobs as root (refused unless the operator said
//! `--allow-root` or named a `--run-as` user), shell jobs when only argv is
//! allowed, programs outside the allow-list, `env` and `cwd` overrides when
//! they are forbidden.

use std::ffi::CString;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Uid, User};

use crate::config::ExecConfig;
use crate::proto::{Command, ExecRequest};

/// The user jobs run as, resolved once at start-up (never between fork and
/// exec, where looking up /etc/group is not safe).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: String,
    pub shell: String,
}

impl RunAs {
    /// Looks `name` up; the server must be root to switch to it.
    pub fn resolve(name: &str) -> anyhow::Result<RunAs> {
        let user = User::from_name(name)
            .with_context(|| format!("cannot look up user {name:?}"))?
            .with_context(|| format!("no such user {name:?}"))?;
        if !Uid::effective().is_root() {
            bail!("--run-as needs the server to run as root");
        }
        let cname = CString::new(name).context("user name contains NUL")?;
        let groups =
            nix::unistd::getgrouplist(&cname, user.gid).context("cannot read the user's groups")?;
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir.to_string_lossy().into_owned(),
            shell: user.shell.to_string_lossy().into_owned(),
        })
    }
}

/// The policy of one server.
#[derive(Debug, Clone)]
pub struct Policy {
    pub argv_only: bool,
    pub allowed_programs: Vec<String>,
    pub allow_env: bool,
    pub allow_cwd: bool,
    pub run_as: Option<RunAs>,
    /// Jobs may run as root (the server is root and no run-as user is set).
    pub allow_root: bool,
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
            allow_env: cfg.allow_env,
            allow_cwd: cfg.allow_cwd,
            run_as,
            allow_root: cfg.allow_root,
        })
    }

    /// Whether jobs would run as root and that is not allowed.
    pub fn refuses_root(&self) -> bool {
        self.run_as.is_none() && Uid::effective().is_root() && !self.allow_root
    }

    /// Checks a request; the error is the `forbidden` message.
    pub fn check(&self, req: &ExecRequest) -> Result<(), String> {
        if self.refuses_root() {
            return Err("the server runs as root and may not run jobs as root \
                        (start it with --run-as USER, or --allow-root)"
                .into());
        }
        match &req.command {
            Command::Shell(_) if self.argv_only => {
                return Err("shell commands are not allowed here; send argv".into());
            }
            Command::Argv(argv) if !self.allowed_programs.is_empty() => {
                let prog = argv.first().map(String::as_str).unwrap_or_default();
                if !self.allowed_programs.iter().any(|p| p == prog) {
                    return Err(format!("program {prog:?} is not in the allow-list"));
                }
            }
            _ => {}
        }
        if !self.allow_env && !req.env.is_empty() {
            return Err("env overrides are not allowed here".into());
        }
        if !self.allow_cwd && req.cwd.is_some() {
            return Err("cwd overrides are not allowed here".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            argv_only: false,
            allowed_programs: vec![],
            allow_env: true,
            allow_cwd: true,
            run_as: None,
            allow_root: true,
        }
    }

    #[test]
    fn each_rule_refuses_what_it_names() {
        let shell = ExecRequest::shell(1, "ls");
        let mut argv = ExecRequest::shell(1, "");
        argv.command = Command::Argv(vec!["ls".into()]);
        assert!(policy().check(&shell).is_ok());

        let p = Policy {
            argv_only: true,
            ..policy()
        };
        assert!(p.check(&shell).is_err());
        assert!(p.check(&argv).is_ok());

        let p = Policy {
            argv_only: true,
            allowed_programs: vec!["/bin/date".into(), "uptime".into()],
            ..policy()
        };
        assert!(p.check(&argv).unwrap_err().contains("allow-list"));
        let mut ok = argv.clone();
        ok.command = Command::Argv(vec!["uptime".into()]);
        assert!(p.check(&ok).is_ok());

        let mut with_env = shell.clone();
        with_env.env.insert("K".into(), "V".into());
        assert!(
            Policy {
                allow_env: false,
                ..policy()
            }
            .check(&with_env)
            .is_err()
        );
        let mut with_cwd = shell.clone();
        with_cwd.cwd = Some("/".into());
        assert!(
            Policy {
                allow_cwd: false,
                ..policy()
            }
            .check(&with_cwd)
            .is_err()
        );
    }
}

//! What the clients' flags make: the request for CMD words, and how to
//! reach and log in to a server (TLS trust, key or token). Shared by the
//! one-host client ([`super::exec`]), fan-out ([`super::fanout`]) and
//! file transfer ([`super::transfer`]).

use anyhow::{Context, bail};

use super::{ConnectArgs, ExecArgs};
use crate::client::{ClientAuth, ExecClient};
use crate::proto::{Command, ExecRequest, OutputOptions};
use crate::secrets::client_token;

impl ExecArgs {
    /// The request CMD words make under the flags (`--argv`, `--env`,
    /// `--cwd`, `--timeout`); `--env` was checked by `exec`.
    pub(super) fn request(&self, id: u64, words: Vec<String>) -> ExecRequest {
        ExecRequest {
            id,
            command: if self.argv {
                Command::Argv(words)
            } else {
                shell_command(&words)
            },
            stdin: false,
            env: parse_env(&self.env).unwrap_or_default(),
            cwd: self.cwd.clone(),
            // 0 is no timeout of the client's: the server's default holds.
            timeout_ms: self
                .timeout
                .filter(|t| !t.is_zero())
                .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
            pty: None,
            output: OutputOptions {
                timestamps: self.timestamps,
                max_output: self.max_output,
                max_output_kill: self.max_output_kill,
            },
            detach: self.detach,
        }
    }
}

impl ConnectArgs {
    /// The TLS trust for `addr` (`HOST:PORT`): a CA, a pinned fingerprint,
    /// or trust on first use in known_hosts.
    pub(super) fn client_tls(&self, addr: &str) -> anyhow::Result<crate::tls::ClientTls> {
        use crate::tls::{ClientTls, Trust};
        let trust = Trust::choose(
            self.tls_ca.as_deref(),
            self.tls_fingerprint.as_deref(),
            self.known_hosts.as_deref(),
        )?;
        let (_, host, _) = crate::endpoint::Endpoint::parse_loose(addr)?;
        ClientTls::new(&trust, &host, addr)
    }
    /// What to log in with: a key (`-i`, a default key file or the agent's)
    /// for servers that take keys, and the token (`SWITCHBOARD_TOKEN`,
    /// `--token-file` or the default file) for those that want it; neither
    /// only with `--no-auth`. A default key file that cannot be used is
    /// warned about and left aside, as ssh does; one named with `-i` is an
    /// error, and the only way in tried.
    pub(super) fn auth(&self) -> anyhow::Result<ClientAuth> {
        let key = match crate::identity::keys::ClientKey::find(self.identity.as_deref()) {
            Ok(k) => k.map(std::sync::Arc::new),
            Err(e) if self.identity.is_some() => return Err(e),
            Err(e) => {
                say!("switchboard: warning: {e:#}; not using that key");
                None
            }
        };
        let known_hosts = match &self.known_hosts {
            Some(p) => Some(p.clone()),
            None => crate::tls::default_known_hosts(),
        };
        // A key named with -i is what the user means to log in with: never
        // traded for the token by a server that offers only that.
        if self.identity.is_some() {
            return Ok(ClientAuth {
                key,
                known_hosts,
                allow_unauthenticated: self.no_auth,
                ..ClientAuth::none()
            });
        }
        let token = client_token(self.token_file.as_deref());
        let auth = ClientAuth {
            key,
            known_hosts,
            allow_unauthenticated: self.no_auth,
            ..ClientAuth::none()
        };
        match token {
            Ok((token, _)) => Ok(ClientAuth {
                token: Some(token),
                ..auth
            }),
            Err(_) if self.no_auth || auth.key.is_some() => Ok(auth),
            Err(e) => Err(anyhow::Error::new(e).context(
                "no exec token and no key (use --token-file, SWITCHBOARD_TOKEN, -i KEY, or --no-auth \
                 for a server without auth)",
            )),
        }
    }

    /// Connects to `target` (TCP or TLS as its scheme says) and logs in.
    pub(super) async fn connect(
        &self,
        addr: &str,
        tls: Option<&crate::tls::ClientTls>,
        auth: &ClientAuth,
    ) -> Result<ExecClient, crate::client::ClientError> {
        match tls {
            Some(tls) => ExecClient::connect_tls(addr, tls, auth, self.connect_timeout).await,
            None => ExecClient::connect(addr, auth, self.connect_timeout).await,
        }
    }
}

/// The shell command line for CMD words: one word is a command line as
/// typed (`'ls | wc'`); several are quoted word by word, so
/// `exec -- sh -c 'exit 7'` runs `sh` with the two arguments it was given
/// (where ssh's plain join would lose the quoting).
pub fn shell_command(words: &[String]) -> Command {
    match words {
        [one] => Command::Shell(one.clone()),
        many => Command::Shell(
            many.iter()
                .map(|w| Command::quote_word(w))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

/// `--env K=V` pairs; an empty name or a pair without `=` is an error.
pub(super) fn parse_env(
    pairs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut env = std::collections::BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--env {p:?}: expected K=V"))?;
        if k.is_empty() {
            bail!("--env {p:?}: empty name");
        }
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_words_are_quoted_one_is_a_command_line() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_command(&w(&["ls | wc"])),
            Command::Shell("ls | wc".into())
        );
        assert_eq!(
            shell_command(&w(&["sh", "-c", "exit 7"])),
            Command::Shell("sh -c 'exit 7'".into())
        );
        assert_eq!(
            shell_command(&w(&["echo", "it's", ""])),
            Command::Shell("echo 'it'\\''s' ''".into())
        );
    }
}

//! Where a client's requests come from: its arguments, a REPL, or a pipe.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::endpoint::{Endpoint, Transport};

/// How a client runs, by the one rule for every client.
pub enum Mode {
    /// Arguments given: one request, then exit.
    Once(String),
    /// No arguments, stdin a terminal: read-eval-print loop.
    Repl,
    /// No arguments, stdin a pipe or file: one request per line.
    Pipe,
}

impl Mode {
    pub fn pick(words: &[String]) -> Mode {
        if !words.is_empty() {
            Mode::Once(words.join(" "))
        } else if std::io::stdin().is_terminal() {
            Mode::Repl
        } else {
            Mode::Pipe
        }
    }
}

/// The client's target and the words after it.
pub struct Target {
    /// `HOST:PORT`.
    pub addr: String,
    /// The transport if the address named one (`tcp://`, `udp://`, `tls://`).
    pub transport: Option<Transport>,
    pub words: Vec<String>,
}

impl Target {
    /// The address `addr`, always one (exec's word before `--`, bench's
    /// argument): parsed by [`Endpoint::parse_client`], a missing port
    /// being `default_port`.
    pub fn address(addr: &str, default_port: u16) -> anyhow::Result<Target> {
        let (transport, host, port) = Endpoint::parse_client(addr, default_port)?;
        Ok(Target {
            addr: Endpoint::new(Transport::Tcp, host, port).host_port(),
            transport,
            words: Vec::new(),
        })
    }

    /// Refuses a scheme `service` does not speak.
    pub fn speaking(self, service: &str, schemes: &[Transport]) -> anyhow::Result<Target> {
        match self.transport {
            Some(t) if !schemes.contains(&t) => {
                let known: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
                anyhow::bail!("{service} speaks {}, not {t}://", known.join(" and "))
            }
            _ => Ok(self),
        }
    }
}

/// Splits `[ADDR] WORDS...` for the clients whose address is optional
/// before free text (echo, time): the first word is the address when it
/// looks like one ([`Endpoint::looks_like_address`]) and must then parse;
/// otherwise every word is text and the address is 127.0.0.1 on
/// `default_port`. To send text that is an address, give the address
/// first.
pub fn split_target(mut args: Vec<String>, default_port: u16) -> anyhow::Result<Target> {
    if let Some(first) = args.first()
        && Endpoint::looks_like_address(first)
    {
        let target = Target::address(first, default_port)?;
        args.remove(0);
        return Ok(Target {
            words: args,
            ..target
        });
    }
    Ok(Target {
        addr: format!("127.0.0.1:{default_port}"),
        transport: None,
        words: args,
    })
}

/// A line editor with history, for the REPL mode.
pub struct Repl {
    editor: DefaultEditor,
    history: Option<PathBuf>,
    prompt: String,
}

impl Repl {
    /// `name` picks the history file (one per client).
    pub fn new(name: &str, prompt: &str) -> anyhow::Result<Self> {
        let mut editor = DefaultEditor::new()?;
        let history = directories::ProjectDirs::from("", "", "switchboard")
            .map(|d| d.data_local_dir().join(format!("history-{name}")));
        if let Some(path) = &history {
            // No history yet is normal.
            let _ = editor.load_history(path);
        }
        Ok(Repl {
            editor,
            history,
            prompt: prompt.to_string(),
        })
    }

    /// The next non-empty line; None on `quit`, `exit`, Ctrl-D.
    /// Ctrl-C abandons the line being typed, as in a shell.
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            match self.editor.readline(&self.prompt) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if trimmed.is_empty() {
                        continue;
                    }
                    if trimmed == "quit" || trimmed == "exit" {
                        return None;
                    }
                    let _ = self.editor.add_history_entry(line.as_str());
                    return Some(line);
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        if let Some(path) = &self.history {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = self.editor.save_history(path);
        }
    }
}

/// Lines of stdin without their `\n` / `\r\n`, as bytes (not necessarily
/// UTF-8). Stops at end of input or on a read error.
pub fn stdin_lines() -> impl Iterator<Item = Vec<u8>> {
    let mut stdin = std::io::stdin().lock();
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Some(line)
            }
        }
    })
}

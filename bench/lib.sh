# Sourced by the bench scripts (bash). A work directory that is HOME and
# XDG_CONFIG_HOME for everything started here (no real home is touched),
# every PID in `pids` stopped and waited for on exit, and a throwaway
# sshd for the ssh/scp peers.

work=$(mktemp -d)
# cargo and rustup keep finding the toolchain (a script sourced from
# another, such as compare.sh running fanout.sh, builds under this HOME).
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup} CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export HOME=$work XDG_CONFIG_HOME=$work/.config
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# throwaway_sshd PORT: sshd on 127.0.0.1:PORT with its own host key, one
# client key ($work/client_key), root allowed, nothing from /etc/ssh;
# its PID in `pids`, its log in $work/sshd.err.
throwaway_sshd() {
  ssh-keygen -q -t ed25519 -N "" -f "$work/host_key"
  ssh-keygen -q -t ed25519 -N "" -f "$work/client_key"
  cp "$work/client_key.pub" "$work/authorized_keys"
  cat >"$work/sshd_config" <<CFG
Port $1
ListenAddress 127.0.0.1
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd.pid
PermitRootLogin yes
StrictModes no
UsePAM no
PasswordAuthentication no
Subsystem sftp internal-sftp
CFG
  mkdir -p /run/sshd
  /usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.err" &
  pids+=($!)
  sleep 0.5
}

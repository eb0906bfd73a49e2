#!/usr/bin/env bash
# Prepares a fresh Debian machine that has Rust: installs the system packages the
# build and the tests use (skipping apt when all are present), then builds every
# binary of the workspace (debug profile, into target/debug/).
# Idempotent: run it as often as you like.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tmux: `dml local up --tmux` and the tmux launcher; nftables/iptables: the bench's
# packet-loss rule; procps: ps/pgrep in tests; systemd: systemd-analyze verify of
# the unit; pkg-config + libssl-dev: native crates (libssh2 builds against OpenSSL);
# openssh-server: the sshd that the `dml cluster` deploy tests start (on 127.0.0.1 and
# on the namespace test bed's hosts);
# iproute2: the namespace test bed's hosts (`ip netns`, veth, bridge).
# libfaketime: the nemesis test's wall-clock jumps.
# build-essential: the C toolchain that native crates (libssh2-sys, ring) compile with.
packages=(build-essential tmux nftables iptables iproute2 procps systemd pkg-config libssl-dev ca-certificates openssh-server libfaketime)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust first" >&2; exit 1; }
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: adding the Rust component $component"
    rustup component add "$component"
  fi
done

# The Python virtualenv .venv (onnxruntime, whose libonnxruntime.so the `ort` crate
# loads, and the model builder's packages).
bash scripts/venv.sh

cargo build --workspace --bins
# dml and dml-agent on PATH (links in ~/.local/bin), shell completions and man pages.
"${CARGO_TARGET_DIR:-target}"/debug/dml install
echo "setup: built $(ls "${CARGO_TARGET_DIR:-target}"/debug/dml "${CARGO_TARGET_DIR:-target}"/debug/dml-agent | tr '\n' ' ')"

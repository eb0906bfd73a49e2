#!/usr/bin/env bash
# Starts N AwesomeDML agents in a tmux session, one window each, without `dml`.
# (On one machine `dml local up --tmux` does the same and also records pids.)
#
# usage: dml-tmux.sh [-n N] [-p BASE_PORT] [-H HOST] [-i INTRODUCER] [-s SESSION]
#                    [-P PRESET] [-b AGENT_BIN] [-d DATA_ROOT] [-K KEY_FILE] [-L SOCKET]
#        dml-tmux.sh -k [-s SESSION] [-L SOCKET]
#   -n  number of agents (default 10)
#   -p  port of the first agent (default 8001); the others follow
#   -H  address the agents bind (default 127.0.0.1)
#   -i  introducer HOST:PORT (default: the first agent)
#   -s  tmux session name (default dml)
#   -P  preset: local, lan or wan (default local)
#   -b  dml-agent binary (default: dml-agent on PATH)
#   -d  directory for the agents' data dirs (default .dml/tmux)
#   -K  cluster key file (default DATA_ROOT/cluster.key, made if missing;
#       give dml the same file: --key-file or DML_KEY_FILE)
#   -L  tmux server socket name (tmux -L; default: tmux's own default)
#   -k  stop: Ctrl-C in every window (each agent announces its leave), then
#       kill the session
# Attach with `tmux attach -t SESSION`.
set -euo pipefail

stop=0 n=10 base=8001 host=127.0.0.1 introducer="" session=dml preset=local bin=dml-agent data=.dml/tmux key="" socket=""
while getopts "n:p:H:i:s:P:b:d:K:L:kh" opt; do
  case "$opt" in
    n) n=$OPTARG ;;
    p) base=$OPTARG ;;
    H) host=$OPTARG ;;
    i) introducer=$OPTARG ;;
    s) session=$OPTARG ;;
    P) preset=$OPTARG ;;
    b) bin=$OPTARG ;;
    d) data=$OPTARG ;;
    K) key=$OPTARG ;;
    L) socket=$OPTARG ;;
    k) stop=1 ;;
    h) sed -n '2,21p' "$0"; exit 0 ;;
    *) sed -n '2,21p' "$0" >&2; exit 2 ;;
  esac
done
command -v tmux >/dev/null || { echo "error: tmux is not installed" >&2; exit 1; }
tmux() { if [[ -n $socket ]]; then command tmux -L "$socket" "$@"; else command tmux "$@"; fi; }

if ((stop)); then
  tmux has-session -t "$session" 2>/dev/null || { echo "no tmux session \"$session\""; exit 0; }
  for w in $(tmux list-windows -t "$session" -F '#{window_index}'); do
    tmux send-keys -t "$session:$w" C-c
  done
  # Windows close as their agents exit; give them up to 10 s.
  for _ in $(seq 100); do
    tmux has-session -t "$session" 2>/dev/null || break
    sleep 0.1
  done
  tmux kill-session -t "$session" 2>/dev/null || true
  echo "stopped tmux session \"$session\""
  exit 0
fi

[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "error: -n \"$n\" must be a positive number" >&2; exit 2; }
[[ $base =~ ^[1-9][0-9]*$ ]] && (( base + n - 1 <= 65535 )) \
  || { echo "error: -p \"$base\" with -n $n runs past port 65535" >&2; exit 2; }
agent=$(command -v "$bin") || { echo "error: agent binary \"$bin\" not found" >&2; exit 1; }
if tmux has-session -t "$session" 2>/dev/null; then
  echo "error: tmux session \"$session\" already exists" >&2
  exit 1
fi
introducer=${introducer:-$host:$base}
mkdir -p "$data"
data=$(cd "$data" && pwd)
if [[ -z $key ]]; then
  key=$data/cluster.key
  if [[ ! -e $key ]]; then
    # 32 random bytes as hex, readable by the owner only (as `dml keygen` writes).
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$key" && echo >> "$key")
    echo "made cluster key $key"
  fi
fi
[[ -r $key ]] || { echo "error: cluster key \"$key\" is not readable" >&2; exit 1; }
key=$(cd "$(dirname "$key")" && pwd)/$(basename "$key")

# Every agent is told the whole cluster (`--node`): the control-plane voters
# default to the first of them, as with `dml local up`.
nodes=()
for ((i = 0; i < n; i++)); do
  nodes+=(--node "$host:$((base + i))")
done
for ((i = 0; i < n; i++)); do
  port=$((base + i))
  cmd=$(printf 'exec %q --key-file %q --preset %q --bind %q --introducer %q --data-dir %q' \
    "$agent" "$key" "$preset" "$host:$port" "$introducer" "$data/data-$port")
  cmd+=$(printf ' %q' "${nodes[@]}")
  if ((i == 0)); then
    pid=$(tmux new-session -d -s "$session" -n "agent-$port" -P -F '#{pane_pid}' "$cmd")
  else
    pid=$(tmux new-window -d -t "$session:" -n "agent-$port" -P -F '#{pane_pid}' "$cmd")
  fi
  echo "agent-$port pid $pid"
done
echo "$n agents in tmux session \"$session\"; attach with: tmux attach -t $session"

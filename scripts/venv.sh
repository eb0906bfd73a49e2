#!/usr/bin/env bash
# Creates the project virtualenv .venv (at the repo root, git-ignored) and installs
# scripts/requirements.txt into it, only when that file changed since the last
# install (its sha256 is kept in .venv/.requirements.sha256). Installs Debian's
# python3 and python3-venv when python3, its venv module or ensurepip is missing.
# Prints the path of the libonnxruntime.so that the onnxruntime wheel ships (the
# library the `ort` crate loads).
# Idempotent: a second run with nothing changed does no work.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
req=scripts/requirements.txt
stamp=$venv/.requirements.sha256
python=${PYTHON:-python3}

if [[ ! -x $venv/bin/python ]]; then
  if ! command -v "$python" >/dev/null || ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    [[ $python == python3 ]] || { echo "venv: $python lacks the venv module or ensurepip" >&2; exit 1; }
    echo "venv: installing python3 python3-venv"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
      command -v sudo >/dev/null || { echo "venv: need root (or sudo) to install python3-venv" >&2; exit 1; }
      sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends python3 python3-venv
  fi
  echo "venv: creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "venv: installing $req"
  rm -f "$stamp"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
else
  echo "venv: $req already installed"
fi

lib=$(ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* 2>/dev/null | head -n1 || true)
[[ -n $lib ]] || { echo "venv: libonnxruntime.so not found under $venv" >&2; exit 1; }
echo "venv: onnxruntime library $(realpath "$lib")"

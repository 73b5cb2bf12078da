#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine and runs every test.
# Used by the README's second command and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a C toolchain for crates that build C; kcat (Debian's librdkafka client) for
# the end-to-end tests; python3 with venv for the Python clients; e2fsprogs + mount for the
# full-disk test (a loop-mounted ext4 image; it needs root and says so when it cannot mount).
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v make >/dev/null || need+=(make)
# librdkafka (built by the rdkafka crate for tests/rust) links zlib and zstd from Debian.
pkg-config --exists zlib 2>/dev/null || need+=(zlib1g-dev)
pkg-config --exists libzstd 2>/dev/null || need+=(libzstd-dev)
command -v kcat >/dev/null || need+=(kcat)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mount >/dev/null || need+=(mount)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
# rustfmt and clippy come with rustup's default profile; a minimal install lacks them.
for component in rustfmt clippy; do
  sub=fmt; [ "$component" = clippy ] && sub=clippy
  if ! cargo "$sub" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
      rustup component add "$component"
    else
      echo "cargo $sub not found: install the $component component of your Rust toolchain" >&2
      exit 1
    fi
  fi
done

# Python clients in a virtualenv under target/ (kept between runs).
venv=target/e2e-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests (tests/rust, tests/e2e) start this binary.
cargo build --bin millrace
export MILLRACE_BIN="$PWD/target/debug/millrace"
cargo test --workspace
"$venv/bin/python" -m pytest -q tests/e2e

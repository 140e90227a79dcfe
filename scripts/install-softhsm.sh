#!/usr/bin/env bash
# Makes SoftHSM2 (the PKCS#11 module that meshca's PKCS#11 tests run against) available on Debian/Ubuntu.
# `npm test` runs it first (`pretest`); CI runs `.ci/run` as root on a fresh Debian machine, so this is what
# installs SoftHSM2 there.
#   - softhsm2-util and the module already present: changes nothing and prints nothing on stderr.
#   - missing and running as root: installs the `softhsm2` package with apt-get, non-interactively (apt-get update
#     first when the package lists do not know it, or when an install from stale lists fails); apt's output goes to
#     a log that is shown only if the install fails; one line on stderr says what was installed.
#   - missing and not root: changes nothing, prints the exact command to run and exits 1.
# On success it prints the module's path (the file to hand to C_Initialize) on stdout, and nothing else there,
# so `module=$(bash scripts/install-softhsm.sh)` works. MESHCA_SOFTHSM_MODULE, when set, is checked and
# printed instead of searching. Messages go to stderr, one line each. No package other than softhsm2 is installed:
# the pkcs11js binding's native build (`npm ci`) needs python3, make and g++, which this script only reports on.
set -euo pipefail

say() { echo "install-softhsm: $*" >&2; }

# Where Debian and Ubuntu put the module: /usr/lib/softhsm/libsofthsm2.so is the package's stable path (a link
# to the multiarch file); the multiarch directory is searched too in case a release drops the link.
find_module() {
  if [ -n "${MESHCA_SOFTHSM_MODULE:-}" ]; then
    [ -f "$MESHCA_SOFTHSM_MODULE" ] && { echo "$MESHCA_SOFTHSM_MODULE"; return 0; }
    return 1
  fi
  local candidate
  for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so \
    /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -f "$candidate" ] && { echo "$candidate"; return 0; }
  done
  # Last resort: ask dpkg where the installed packages put it (the module lives in libsofthsm2 on newer
  # releases, in softhsm2 on older ones).
  if command -v dpkg >/dev/null 2>&1; then
    candidate=$(dpkg -L libsofthsm2 softhsm2 2>/dev/null | grep -m1 '/libsofthsm2\.so$' || true)
    [ -n "$candidate" ] && [ -f "$candidate" ] && { echo "$candidate"; return 0; }
  fi
  return 1
}

present() { command -v softhsm2-util >/dev/null 2>&1 && find_module >/dev/null; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# One line, and never an install: a compiler is more than a test run should put on a machine by itself, and by the
# time `npm test` runs this, `npm ci` has already needed them.
report_build_tools() {
  local missing="" tool
  for tool in python3 make g++; do command -v "$tool" >/dev/null 2>&1 || missing="${missing:+$missing, }$tool"; done
  [ -z "$missing" ] && return 0
  local sudo=""
  is_root || sudo="sudo "
  say "missing $missing: npm ci needs python3, make and g++ to build the native addon pkcs11js; install them with: ${sudo}apt-get install -y python3 make g++"
}

report_build_tools

if present; then
  find_module
  exit 0
fi

if [ -n "${MESHCA_SOFTHSM_MODULE:-}" ] && [ ! -f "$MESHCA_SOFTHSM_MODULE" ]; then
  say "MESHCA_SOFTHSM_MODULE=$MESHCA_SOFTHSM_MODULE is not a file; unset it to search the usual places, or point it at libsofthsm2.so"
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  say "SoftHSM2 is missing and this is not a Debian/Ubuntu system (no apt-get): install SoftHSM2 2.x with the system's package manager and set MESHCA_SOFTHSM_MODULE to its libsofthsm2.so"
  exit 1
fi

if ! is_root; then
  say "SoftHSM2 (softhsm2-util, libsofthsm2.so) is missing and installing it needs root; run: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y softhsm2"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Lock::Timeout: on a freshly booted machine apt may still be busy (unattended-upgrades); wait for it rather than fail.
apt_get() { apt-get -q -o DPkg::Lock::Timeout=300 "$@" >>"$log" 2>&1; }
install_softhsm() { apt_get install -y --no-install-recommends softhsm2; }
failed() {
  say "$1; apt-get's output follows"
  cat "$log" >&2
  exit 1
}

# Lists that do not know the package yet (a fresh machine or container has empty lists) need an update first; a known
# package installs without one, which keeps repeat runs off the network.
updated=no
if ! apt-cache show softhsm2 >/dev/null 2>&1; then
  apt_get update || failed "apt-get update failed"
  updated=yes
fi
if ! install_softhsm; then
  # Stale lists point at versions the mirror no longer has: refresh once and try again.
  [ "$updated" = yes ] && failed "apt-get install -y softhsm2 failed"
  { apt_get update && install_softhsm; } || failed "apt-get install -y softhsm2 failed, also after apt-get update"
fi

if ! present; then
  failed "installed softhsm2, but softhsm2-util or libsofthsm2.so is still not found (set MESHCA_SOFTHSM_MODULE to the module)"
fi
module=$(find_module)
say "installed softhsm2 $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null || echo '(version unknown)') with apt-get: $(command -v softhsm2-util), module $module"
echo "$module"

#!/usr/bin/env bash
# Makes SoftHSM2 (the PKCS#11 module that meshca's PKCS#11 tests run against) available on Debian/Ubuntu.
#   - softhsm2-util and the module already present: changes nothing.
#   - missing and running as root: installs the `softhsm2` package with apt-get, non-interactively.
#   - missing and not root: changes nothing, prints the exact command to run and exits 1.
# On success it prints the module's path (the file to hand to C_Initialize) on stdout, and nothing else there,
# so `module=$(bash scripts/install-softhsm.sh)` works. MESHCA_SOFTHSM_MODULE, when set, is checked and
# printed instead of searching. Messages go to stderr. No package other than softhsm2 is installed: the
# pkcs11js binding's native build needs python3, make and g++, which this script only reports on.
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

report_build_tools() {
  local missing=()
  local tool
  for tool in python3 make g++; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "note: the pkcs11js native build (npm install) also needs ${missing[*]}: apt-get install -y python3 make g++"
  fi
}

if present; then
  module=$(find_module)
  say "SoftHSM2 already present: $(command -v softhsm2-util), module $module; nothing to do"
  report_build_tools
  echo "$module"
  exit 0
fi

if [ -n "${MESHCA_SOFTHSM_MODULE:-}" ]; then
  say "MESHCA_SOFTHSM_MODULE=$MESHCA_SOFTHSM_MODULE is not a file; unset it to search the usual places"
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  say "SoftHSM2 is missing and this is not a Debian/Ubuntu system (no apt-get): install SoftHSM2 2.x with the"
  say "system's package manager and set MESHCA_SOFTHSM_MODULE to its libsofthsm2.so"
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  say "SoftHSM2 is missing and installing it needs root. Run:"
  say "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y softhsm2"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# An apt cache that does not know the package yet (a fresh container has empty lists) needs an update first;
# a known package installs without one, which keeps repeat runs off the network.
if ! apt-cache show softhsm2 >/dev/null 2>&1; then
  say "apt-get update (the package lists do not know softhsm2)"
  apt-get update -qq >&2
fi
say "apt-get install -y softhsm2"
if ! apt-get install -y -qq --no-install-recommends softhsm2 >&2; then
  # Stale lists point at versions the mirror no longer has: refresh once and try again.
  say "install failed; apt-get update and one more try"
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends softhsm2 >&2
fi

if ! present; then
  say "installed softhsm2 but softhsm2-util or libsofthsm2.so is still not found; dpkg -L softhsm2 lists:"
  dpkg -L softhsm2 libsofthsm2 2>/dev/null | grep -E 'softhsm2-util|\.so' >&2 || true
  exit 1
fi
module=$(find_module)
say "installed: $(command -v softhsm2-util), module $module ($(dpkg-query -W -f='${Version}' softhsm2))"
report_build_tools
echo "$module"

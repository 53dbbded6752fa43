#!/usr/bin/env bash
# Build mkcomposefs and composefs-info 1.0.8 (the oracle the byte-identity tests and bench/composefs.py
# compare diskci's composefs writer against) from Debian's source package, when they are missing.
# Debian 12 has no composefs package; Debian 13 and later do (apt-get install composefs).
# The source tarball comes from the Debian mirror and is checked against the sha256 Debian publishes
# for composefs 1.0.8 (the Checksums-Sha256 of composefs_1.0.8-3.dsc); it installs into /usr/local.
set -euo pipefail
VERSION=1.0.8
SHA256=2b2b11f9a25744c82e9e12b098eefd0ab42d56ae6322634c15f966b3a64926ef
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
URL="$MIRROR/pool/main/c/composefs/composefs_${VERSION}.orig.tar.gz"

if command -v mkcomposefs >/dev/null && command -v composefs-info >/dev/null; then
  echo "setup: mkcomposefs present ($(command -v mkcomposefs))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: mkcomposefs is missing (run as root to build composefs $VERSION into /usr/local); its comparison tests will skip" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup: building mkcomposefs $VERSION from Debian's source ($URL)"
curl -fsSL --retry 3 -o "$work/src.tar.gz" "$URL"
echo "$SHA256  $work/src.tar.gz" | sha256sum -c --quiet -
tar -xzf "$work/src.tar.gz" -C "$work"
meson setup "$work/build" "$work/composefs-$VERSION" --prefix=/usr/local --buildtype=release \
  -Dman=disabled -Dfuse=disabled >"$work/meson.log" 2>&1 || { tail -n 30 "$work/meson.log" >&2; exit 1; }
ninja -C "$work/build" >"$work/ninja.log" 2>&1 || { tail -n 30 "$work/ninja.log" >&2; exit 1; }
meson install -C "$work/build" --quiet >/dev/null
ldconfig
echo "setup: mkcomposefs $VERSION installed ($(command -v mkcomposefs))"

#!/usr/bin/env bash
# Builds the policy enforcer's image archive: `build.sh ARCH` writes "$OUT" (a docker-archive
# tar of localhost/installer-enforcer:<version>, zstd --long=25 -19, as k3s imports it).
# Needs internet, podman or docker (with buildx for another architecture), and zstd. Run by
# assets/fetch.sh as the recipe of the `enforcer-<arch>` entries of assets/assets.lock.
set -euo pipefail
arch="${1:?usage: build.sh amd64|arm64 (writes \$OUT)}"
out="${OUT:?set OUT to the archive to write}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/src/enforcer/Cargo.toml" | head -n1)"
ref="localhost/installer-enforcer:${version:?no version in src/enforcer/Cargo.toml}"
if command -v podman >/dev/null 2>&1; then engine=podman
elif command -v docker >/dev/null 2>&1; then engine=docker
else echo "build.sh: neither podman nor docker is installed" >&2; exit 127; fi
t="$(mktemp -d)"
trap 'rm -rf "$t"' EXIT
"$engine" build --platform "linux/$arch" -f "$here/Dockerfile" -t "$ref" "$root"
if [ "$engine" = podman ]; then
  podman save --format docker-archive -o "$t/image.tar" "$ref"
else
  docker save -o "$t/image.tar" "$ref"
fi
zstd -q -f --long=25 -19 -o "$out" "$t/image.tar"

#!/usr/bin/env bash
# Downloads every artifact named in assets/assets.lock into assets/cache/ and verifies its
# SHA-256 against the lock. Run it on a machine with internet, then build the installer:
# assets/build.rs embeds what this script verified. See docs/assets.md.
#
#   assets/fetch.sh                      download and verify (arches from INSTALLER_ASSETS_ARCHES, default amd64)
#   assets/fetch.sh --arch all           every architecture in the lock
#   assets/fetch.sh --only k3s-amd64     one artifact (repeatable)
#   assets/fetch.sh --verify-only        download nothing; check what is already in the cache
#   assets/fetch.sh --update-lock        for an entry without a checksum, record the checksum of
#                                        this first download in the lock (sha256_state: recorded)
#   assets/fetch.sh --lock F --dir D     another lock file / cache directory
#
# An entry has either `url` (downloaded with curl; file:// works too) or `build` (a bash recipe
# run with OUT set to the path it must write). A published or recorded checksum is never
# changed by this script: a mismatch is always an error and the bad file is deleted.
# Needs: bash, curl, sha256sum, jq.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lock="$here/assets.lock"
dir="${INSTALLER_ASSETS_DIR:-$here/cache}"
arches="${INSTALLER_ASSETS_ARCHES:-amd64}"
update_lock=0
verify_only=0
only=()

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "fetch.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --lock) lock="${2:?--lock needs a file}"; shift 2 ;;
    --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
    --arch) arches="${2:?--arch needs a list such as amd64,arm64 or all}"; shift 2 ;;
    --only) only+=("${2:?--only needs an artifact name}"); shift 2 ;;
    --update-lock) update_lock=1; shift ;;
    --verify-only) verify_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

for tool in curl sha256sum jq; do
  command -v "$tool" >/dev/null || die "$tool is required (Debian: apt-get install $tool)"
done
[ -f "$lock" ] || die "no lock file at $lock"
jq -e '.schema == 1 and (.artifacts | type == "array")' "$lock" >/dev/null \
  || die "$lock is not a schema-1 asset lock"
mkdir -p "$dir"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

selected() { # name arch
  local n
  if [ ${#only[@]} -gt 0 ]; then
    for n in "${only[@]}"; do [ "$n" = "$1" ] && return 0; done
    return 1
  fi
  [ "$arches" = all ] || [ -z "$2" ] || [[ ",$arches," == *",$2,"* ]]
}

record() { # name sha256 size source
  local tmp
  tmp="$(mktemp "$lock.XXXXXX")"
  jq --indent 2 --arg n "$1" --arg s "$2" --argjson z "$3" --arg src "$4" \
    '(.artifacts[] | select(.name == $n)) |= (.sha256 = $s | .size = $z | .sha256_state = "recorded" | .sha256_source = $src)' \
    "$lock" >"$tmp"
  mv "$tmp" "$lock"
}

ok=0
failed=0
fail() { echo "FAIL  $1: $2" >&2; failed=$((failed + 1)); }

# Fields are joined with US (0x1f), not tabs: read would merge empty tab-separated fields.
while IFS=$'\x1f' read -r name arch file url sha state build64; do
  selected "$name" "$arch" || continue
  case "$file" in
    ""|.*|*/*) fail "$name" "bad file name '$file' in the lock"; continue ;;
  esac
  if [ -n "$sha" ] && ! [[ "$sha" =~ ^[0-9a-f]{64}$ ]]; then
    fail "$name" "sha256 in the lock is not 64 lower-case hex digits"; continue
  fi
  if [ -z "$sha" ] && [ "$state" != unverified ]; then
    fail "$name" "no sha256 but sha256_state is '$state' (must be 'unverified')"; continue
  fi
  dest="$dir/$file"

  if [ -f "$dest" ] && [ -n "$sha" ]; then
    have="$(sha256_of "$dest")"
    if [ "$have" = "$sha" ]; then
      echo "ok    $name: $dest (cached, sha256 verified)"
      ok=$((ok + 1)); continue
    fi
    echo "stale $name: $dest has sha256 $have, the lock says $sha" >&2
    if [ "$verify_only" = 1 ]; then fail "$name" "checksum mismatch"; continue; fi
  fi
  if [ "$verify_only" = 1 ]; then
    if [ -z "$sha" ]; then fail "$name" "no checksum in the lock (state $state): run with --update-lock"
    else fail "$name" "missing: $dest"; fi
    continue
  fi

  part="$dest.part"
  rm -f "$part"
  if [ -n "$url" ]; then
    echo "get   $name: $url"
    if ! curl --fail --location --silent --show-error --retry 3 -o "$part" "$url"; then
      rm -f "$part"; fail "$name" "download failed: $url"; continue
    fi
    origin="$url"
  elif [ -n "$build64" ]; then
    echo "build $name: running its recipe"
    if ! OUT="$part" bash -euo pipefail -c "$(printf '%s' "$build64" | base64 -d)"; then
      rm -f "$part"; fail "$name" "build recipe failed"; continue
    fi
    [ -f "$part" ] || { fail "$name" "build recipe wrote nothing to \$OUT"; continue; }
    origin="its build recipe"
  else
    fail "$name" "the lock gives neither url nor build"; continue
  fi

  got="$(sha256_of "$part")"
  if [ -n "$sha" ]; then
    if [ "$got" != "$sha" ]; then
      rm -f "$part"
      fail "$name" "sha256 mismatch: got $got, the lock says $sha ($state); the download was deleted"
      continue
    fi
  elif [ "$update_lock" = 1 ]; then
    size="$(stat -c %s "$part")"
    record "$name" "$got" "$size" "first download of $origin on $(date -u +%Y-%m-%d), recorded by fetch.sh --update-lock"
    echo "lock  $name: recorded sha256 $got ($size bytes) in $lock"
  else
    rm -f "$part"
    fail "$name" "the lock has no checksum for it (got $got); rerun with --update-lock to record it"
    continue
  fi
  mv -f "$part" "$dest"
  echo "ok    $name: $dest (sha256 verified)"
  ok=$((ok + 1))
done < <(jq -r '.artifacts[] | [.name, (.arch // ""), .file, (.url // ""), (.sha256 // ""),
                 (.sha256_state // ""), ((.build // "") | @base64)] | join("\u001f")' "$lock")

echo "$ok verified, $failed failed (cache: $dir)"
[ "$failed" -eq 0 ]

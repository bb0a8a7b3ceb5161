#!/usr/bin/env bash
# Builds the CPU image (docker/Dockerfile) and runs c10dtest's tests in it as its non-root user,
# without a Docker daemon: buildah with chroot isolation and the vfs storage driver, all of its
# storage in a temporary directory that is removed at the end, on a base image made locally
# with debootstrap (so no registry is needed, only a Debian mirror).
#
#   scripts/test-image.sh [ctest args]     (default: -LE package; the package checks rebuild the
#                                           library in a consumer project and are skipped here)
#
# Environment:
#   C10DTEST_MIRROR       Debian mirror for debootstrap (default: the one apt uses here for the
#                         suite, else http://deb.debian.org/debian)
#   C10DTEST_SUITE        Debian suite of the base image (default: bookworm)
#   C10DTEST_IMAGE_CACHE  where the debootstrapped root filesystem is kept as a tarball between
#                         runs (default: ${XDG_CACHE_HOME:-~/.cache}/c10dtest; empty: no cache)
#   C10DTEST_TMP          parent of the temporary storage (default: ${TMPDIR:-/var/tmp}); the
#                         vfs driver copies every layer in full, so leave ~15 GB free there
#   C10DTEST_KEEP_STORAGE=1  keep the temporary storage (its path is printed) for debugging
#
# Needs root (debootstrap, and rootful buildah); re-runs itself with sudo when not root.
# Installs buildah and debootstrap with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "c10dtest: need root or sudo (debootstrap, buildah)" >&2; exit 1; }
  exec sudo --preserve-env=C10DTEST_MIRROR,C10DTEST_SUITE,C10DTEST_IMAGE_CACHE,C10DTEST_TMP,C10DTEST_KEEP_STORAGE,XDG_CACHE_HOME,TMPDIR \
    "$src/scripts/test-image.sh" "$@"
fi

ctest_args=("$@")
[ ${#ctest_args[@]} -gt 0 ] || ctest_args=(-LE package)

suite=${C10DTEST_SUITE:-bookworm}
base_image=localhost/c10dtest-base:$suite
image=localhost/c10dtest:$suite
user=c10dtest   # the Dockerfile's non-root user

log() { printf 'c10dtest-image: %s\n' "$*" >&2; }
now() { date +%s; }
timings=()
stage_start=0
stage() { stage_start=$(now); log "== $*"; }
stage_done() { timings+=("$(printf '%-12s %5ss' "$1" $(( $(now) - stage_start )))"); }

# --- 1. tools --------------------------------------------------------------------------------
packages=(buildah debootstrap debian-archive-keyring tar)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
  # No recommends: fuse-overlayfs, slirp4netns and the like are not needed with vfs + chroot.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- temporary storage, removed on exit --------------------------------------------------------
tmp=$(mktemp -d "${C10DTEST_TMP:-${TMPDIR:-/var/tmp}}/c10dtest-image.XXXXXX")
bh=(buildah --root "$tmp/storage" --runroot "$tmp/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot
# Our own registries.conf: nothing is pulled, and the host's search registries do not matter.
printf 'unqualified-search-registries = []\n' >"$tmp/registries.conf"
export CONTAINERS_REGISTRIES_CONF=$tmp/registries.conf
containers=()
cleanup() {
  local rc=$?
  set +e
  for c in "${containers[@]}"; do "${bh[@]}" rm "$c" >/dev/null 2>&1; done
  # Removes every container, mount and image of the temporary store, then the store itself.
  "${bh[@]}" rm --all >/dev/null 2>&1
  "${bh[@]}" rmi --all --force >/dev/null 2>&1
  if [ "${C10DTEST_KEEP_STORAGE:-0}" = 1 ]; then
    log "storage kept in $tmp (buildah --root $tmp/storage --runroot $tmp/run --storage-driver vfs)"
  else
    # Anything still mounted below (should be nothing) is unmounted before removal.
    awk -v t="$tmp/" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r |
      while read -r m; do umount -l "$m"; done
    rm -rf "$tmp"
  fi
  if [ ${#timings[@]} -gt 0 ]; then
    log "timings:"
    for t in "${timings[@]}"; do log "  $t"; done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "temporary storage: $tmp"

# --- 2. base image from debootstrap ----------------------------------------------------------
mirror=${C10DTEST_MIRROR:-}
if [ -z "$mirror" ]; then
  # The mirror apt uses for "<suite>/main" here (one-line or deb822 sources alike).
  mirror=$(apt-cache policy 2>/dev/null | awk -v s="$suite/main" '$3 == s && $2 ~ /^https?:/ {print $2; exit}')
  mirror=${mirror:-http://deb.debian.org/debian}
fi
security=$(apt-cache policy 2>/dev/null | awk -v s="$suite-security/main" '$3 == s && $2 ~ /^https?:/ {print $2; exit}')
security=${security:-http://deb.debian.org/debian-security}
cache=${C10DTEST_IMAGE_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/c10dtest}
rootfs_tar=$tmp/rootfs.tar
cached_tar=${cache:+$cache/rootfs-$suite-minbase-$(dpkg --print-architecture).tar}

stage "debootstrap --variant=minbase $suite $mirror"
if [ -n "$cached_tar" ] && [ -s "$cached_tar" ]; then
  log "using cached root filesystem $cached_tar"
  rootfs_tar=$cached_tar
else
  rootfs=$tmp/rootfs
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -n 30 "$tmp/debootstrap.log" >&2; exit 1; }
  # What an image does not carry: device nodes, downloaded packages and indexes, and this
  # machine's resolv.conf and hostname (the container runtime provides its own).
  rm -rf "${rootfs:?}"/dev/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
  # The suites of the official image: updates and security beside the release.
  rm -f "$rootfs"/etc/apt/sources.list
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$suite" "$suite" /usr/share/keyrings/debian-archive-keyring.gpg \
    "$security" "$suite" /usr/share/keyrings/debian-archive-keyring.gpg \
    >"$rootfs"/etc/apt/sources.list.d/debian.sources
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$rootfs_tar" .
  rm -rf "$rootfs"
  if [ -n "$cached_tar" ]; then
    mkdir -p "$cache"
    cp "$rootfs_tar" "$cached_tar.tmp" && mv "$cached_tar.tmp" "$cached_tar"
  fi
fi
stage_done debootstrap

stage "import as $base_image"
ctr=$("${bh[@]}" from scratch)
containers+=("$ctr")
"${bh[@]}" add "$ctr" "$rootfs_tar" / >/dev/null   # a local tar archive is unpacked
"${bh[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd bash --label "org.opencontainers.image.description=Debian $suite minbase" "$ctr"
"${bh[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
containers=()
[ "$rootfs_tar" = "$tmp/rootfs.tar" ] && rm -f "$rootfs_tar"
stage_done base-import

# --- 3. the image ----------------------------------------------------------------------------
stage "build docker/Dockerfile FROM $base_image"
"${bh[@]}" bud --isolation chroot --pull-never --layers=false \
  --build-arg BASE="$base_image" -f docker/Dockerfile -t "$image" "$src"
stage_done bud

# --- 4. the tests, in a container of the image, as its non-root user --------------------------
stage "scripts/test.sh ${ctest_args[*]} in $image as $user"
ctr=$("${bh[@]}" from --pull-never "$image")
containers+=("$ctr")
run=("${bh[@]}" run --isolation chroot --user "$user" "$ctr" --)
# The context's build directories and .git must not have been copied in (.dockerignore).
stray=$("${run[@]}" sh -c 'ls -d build?* .git .gloo-include 2>/dev/null || true')
[ -z "$stray" ] || { log "copied into the image despite .dockerignore: $stray"; exit 1; }
[ "$("${run[@]}" id -u)" != 0 ] || { log "the image's user is root"; exit 1; }
set +e
"${run[@]}" scripts/test.sh "${ctest_args[@]}" 2>&1 | tee "$tmp/ctest.log"
rc=${PIPESTATUS[0]}
set -e
stage_done tests
if [ "$rc" -ne 0 ]; then
  log "tests failed in the image (exit code $rc)"
  exit "$rc"
fi
grep -q "100% tests passed" "$tmp/ctest.log" || { log "ctest did not report 100% tests passed"; exit 1; }

# --- 5. a user's project against the installed c10dtest, as in docker/ci-example.yml ----------
stage "test/package/consumer with find_package(c10dtest) from the image's install"
set +e
# shellcheck disable=SC2016   # expanded in the container
"${run[@]}" sh -c 'cmake -S test/package/consumer -B /tmp/consumer -DCMAKE_BUILD_TYPE=Release >/dev/null &&
  cmake --build /tmp/consumer -j "$(nproc)" >/dev/null &&
  ctest --test-dir /tmp/consumer --output-on-failure' 2>&1 | tee "$tmp/consumer.log"
rc=${PIPESTATUS[0]}
set -e
stage_done consumer
if [ "$rc" -ne 0 ] || ! grep -q "100% tests passed" "$tmp/consumer.log"; then
  log "the consumer project failed against the image's install (exit code $rc)"
  exit 1
fi
log "image built; every selected test, and a consumer project, passed as $user"

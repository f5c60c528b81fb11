#!/usr/bin/env bash
# The action's image, built from this checkout and run in CI without a Docker daemon.
#
#   bash scripts/image.sh          build (stand-in base cached), print the image ID on stdout
#   bash scripts/image.sh test     build, then run tests/test_image.py against the image
#   bash scripts/image.sh clean    remove what this script made: images, containers, cached base
#
# Debian's buildah builds the Dockerfile with chroot isolation and vfs storage (no daemon, no
# overlay mounts, no user namespaces), in a storage of its own ($FLEET_BUILDAH_ROOT) so that
# cleaning up never touches anybody else's images. Everything but the ID goes to stderr.
#
# The Dockerfile's base, python:3.11.*-slim-bookworm, is on Docker Hub, which CI cannot reach. CI
# makes a stand-in from Debian's packages and passes it as --build-arg PYTHON_BASE; the Dockerfile
# is what users build, unchanged. The stand-in is made like the official image: bookworm's python3
# (3.11), and pip, setuptools and wheel installed by pip into /usr/local from Debian's wheels, so
# the Dockerfile's `pip uninstall setuptools wheel` really removes them (Debian's python3-pip
# package installs them where pip refuses to uninstall from: "outside environment /usr").
# Two things are this machine's, not the image's: its CA bundle and its pip settings that name a
# remote index or proxy. The way out to the package index may be TLS-intercepted by a CA that
# Debian's bundle lacks (it is where this was written: pip in the build then fails with
# CERTIFICATE_VERIFY_FAILED), so the machine's bundle replaces Debian's and /etc/pip.conf points
# pip's `cert` at it (a pip from PyPI would otherwise trust only its own certifi). They go into the
# stand-in only: `pip install --require-hashes` in the Dockerfile, unchanged, reaches the index
# pip here does, and checks the same hashes.
#
# Needs root, or passwordless sudo (buildah, debootstrap and chroot run through `sudo -n`).
#
# The debootstrapped root file system (about 40 s to make) is cached in $FLEET_IMAGE_CACHE, keyed
# by the recipe below; the base image made from it (CA and pip settings added) is kept in the
# storage, keyed by recipe, CA bundle and pip settings. Only one base and one action image are kept.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(…) stops the script too
cd "$(dirname "$0")/.."

export FLEET_BUILDAH_ROOT="${FLEET_BUILDAH_ROOT:-/var/lib/fleet-rollout/containers}"
export FLEET_BUILDAH_RUNROOT="${FLEET_BUILDAH_RUNROOT:-/run/fleet-rollout/containers}"
CACHE="${FLEET_IMAGE_CACHE:-/var/cache/fleet-rollout}"
MIRROR="${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_REPO=localhost/fleet-rollout-base
IMAGE_REPO=localhost/fleet-rollout

# The CA bundle pip on this machine trusts: its `cert` setting, else the system's.
ca_bundle() {
  local candidate
  for candidate in "${FLEET_CA_BUNDLE:-}" "${PIP_CERT:-}" \
      "$(python3 -m pip config get global.cert 2>/dev/null || true)" "${SSL_CERT_FILE:-}" \
      "${REQUESTS_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$candidate" ] && [ -s "$candidate" ]; then echo "$candidate"; return; fi
  done
  echo "image: no CA bundle found" >&2
  return 1
}
CA_BUNDLE=$(ca_bundle)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
buildah() { $SUDO env BUILDAH_ISOLATION=chroot buildah --root "$FLEET_BUILDAH_ROOT" \
  --runroot "$FLEET_BUILDAH_RUNROOT" --storage-driver vfs "$@"; }
log() { printf '%s\n' "$*" >&2; }
seconds() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(seconds)"; }

# The recipe of the stand-in root file system. Its text is the cache key: change it, and the next
# run makes a new one. Runs as root in a fresh directory "$1".
make_rootfs() {
  local rootfs="$1"
  debootstrap --variant=minbase \
    --include=python3,python-is-python3,ca-certificates,python3-pip-whl,python3-setuptools-whl,python3-wheel-whl \
    bookworm "$rootfs" "$MIRROR"
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  # shellcheck disable=SC2016  # expanded by the shell in the chroot
  chroot "$rootfs" sh -euc 'wheels=/usr/share/python-wheels; set -- "$wheels"/pip-*.whl
    python3 "$1/pip" install --no-index --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --find-links "$wheels" pip setuptools wheel
    dpkg --purge python3-pip-whl python3-setuptools-whl python3-wheel-whl'
  # What a slim image leaves out: package lists and archives, documentation, translations.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/log/* "$rootfs"/root/.cache
  find "$rootfs"/usr/local/lib "$rootfs"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} +
}

# This machine's pip settings that matter inside a build: where the index is and how to get there.
# Local paths (find-links, file:// indexes, constraint files) do not exist in the image and stay out.
pip_settings() {
  python3 - <<'EOF'
import os, subprocess
keys = {"index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries", "default-timeout"}
lines = []
try:
    listed = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
except OSError:
    listed = ""
for line in listed.splitlines():
    name, _, value = line.partition("=")
    key = name.rsplit(".", 1)[-1]
    value = value.strip().strip("'\"")
    if key not in keys or not value:
        continue
    if key.endswith("index-url"):
        value = " ".join(v for v in value.split() if v.startswith(("http://", "https://")))
        if not value:
            continue
    lines.append(f"{key} = {value}")
for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_PROXY"):
    value = os.environ.get(name, "")
    if value and not (name.endswith("INDEX_URL") and not value.startswith(("http://", "https://"))):
        lines.append(f"{name[4:].lower().replace('_', '-')} = {value}")
print("[global]\ncert = /etc/ssl/certs/ca-certificates.crt")
for line in dict.fromkeys(lines):
    print(line)
EOF
}

# Proxy variables of this machine, for pip in the build (unset here: nothing is passed).
proxy_env() {
  local name
  for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    if [ -n "${!name:-}" ]; then printf '%s=%s\n' "$name" "${!name}"; fi
  done
}

# The stand-in base's name; made (or taken from the cache) when missing. Prints the name.
base_image() {
  local recipe_key settings key tag tarball
  recipe_key=$( { declare -f make_rootfs; echo "$MIRROR"; } | sha256sum | cut -c1-16)
  settings=$(pip_settings)
  key=$( { echo "$recipe_key"; cat "$CA_BUNDLE"; echo "$settings"; proxy_env; } | sha256sum | cut -c1-16)
  tag="$BASE_REPO:$key"
  if buildah inspect --type image "$tag" >/dev/null 2>&1; then
    log "base: $tag (kept from an earlier run)"
    echo "$tag"
    return
  fi
  $SUDO mkdir -p "$CACHE"
  tarball="$CACHE/rootfs-$recipe_key.tar"
  if [ ! -s "$tarball" ]; then
    local started rootfs
    started=$(seconds)
    log "base: debootstrap bookworm into a new root file system (about a minute; log in $CACHE/rootfs.log)"
    rootfs=$($SUDO mktemp -d "$CACHE/rootfs.XXXXXX")
    if ! $SUDO bash -euo pipefail -c "$(declare -f make_rootfs); MIRROR='$MIRROR'; make_rootfs '$rootfs'" \
        2>&1 | $SUDO tee "$CACHE/rootfs.log" >/dev/null; then
      $SUDO tail -n 40 "$CACHE/rootfs.log" >&2
      $SUDO rm -rf "$rootfs"
      log "base: making the root file system failed (above: the end of $CACHE/rootfs.log)"
      return 1
    fi
    $SUDO tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
    $SUDO mv "$tarball.part" "$tarball"
    $SUDO rm -rf "$rootfs"
    $SUDO find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$recipe_key.tar" -delete
    log "base: root file system made in $(elapsed "$started") s, cached as $tarball"
  fi
  local ctr mnt
  ctr=$(buildah from --name "fleet-rollout-base-$key" scratch)
  mnt=$(buildah mount "$ctr")
  $SUDO tar -C "$mnt" --numeric-owner -xf "$tarball"
  $SUDO cp "$CA_BUNDLE" "$mnt/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' "$settings" | $SUDO tee "$mnt/etc/pip.conf" >/dev/null
  buildah umount "$ctr" >/dev/null
  local envs=(--env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8)
  while IFS= read -r line; do envs+=(--env "$line"); done < <(proxy_env)
  buildah config "${envs[@]}" --cmd python3 \
    --label org.opencontainers.image.description="fleet-rollout CI stand-in for python:3.11-slim-bookworm" "$ctr"
  buildah commit --rm --quiet "$ctr" "$tag" >/dev/null
  # One base at a time: older ones (another recipe, CA or setting) go.
  local old
  for old in $(buildah images --format '{{.Name}}:{{.Tag}}'); do
    if [[ "$old" == "$BASE_REPO:"* && "$old" != "$tag" ]]; then buildah rmi "$old" >/dev/null || true; fi
  done
  log "base: $tag made from $tarball"
  echo "$tag"
}

image_size() {  # bytes of an image's layers, uncompressed (as stored: vfs keeps them so)
  buildah inspect --type image "$1" \
    | python3 -c 'import json, sys; print(sum(l["size"] for l in json.loads(json.load(sys.stdin)["Manifest"])["layers"]))'
}

build() {
  local started base iidfile image
  started=$(seconds)
  # One build at a time on a machine: the base, its cache and the storage are shared.
  exec 9>>"${TMPDIR:-/tmp}/fleet-rollout-image.lock"
  flock -w 1200 9
  # Working containers left by an interrupted run of this script or of the image tests.
  buildah containers --format '{{.ContainerName}} {{.ContainerID}}' | awk '$1 ~ /^fleet-rollout-/ {print $2}' \
    | while read -r ctr; do buildah rm "$ctr" >/dev/null || true; done
  base=$(base_image)
  log "image: building the Dockerfile on $base"
  iidfile=$(mktemp)
  buildah bud --isolation chroot --pull=never --build-arg "PYTHON_BASE=$base" --iidfile "$iidfile" \
    --tag "$IMAGE_REPO:ci" --file Dockerfile . >&2
  image=$(cat "$iidfile")
  rm -f "$iidfile"
  buildah rmi --prune >/dev/null 2>&1 || true  # the previous build, untagged now
  local size base_size
  size=$(image_size "$image")
  base_size=$(image_size "$base")
  log "image: $image ($IMAGE_REPO:ci)"
  log "image: size $(numfmt --to=iec --suffix=B "$size") ($size bytes), of which the Dockerfile adds" \
      "$(numfmt --to=iec --suffix=B $((size - base_size))) on the stand-in base"
  log "image: built in $(elapsed "$started") s"
  echo "$image"
}

case "${1:-build}" in
  build)
    build
    ;;
  test)
    image=$(build)
    FLEET_IMAGE="$image" python3 -m pytest -p no:cacheprovider tests/test_image.py
    ;;
  clean)
    buildah rm --all >/dev/null 2>&1 || true
    buildah rmi --all --force >/dev/null 2>&1 || true
    $SUDO rm -rf "$CACHE"
    ;;
  *)
    log "usage: $0 [build|test|clean]"
    exit 64
    ;;
esac

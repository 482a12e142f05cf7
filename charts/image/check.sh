#!/usr/bin/env bash
# Checks that the release binaries fit the Containerfile's runtime base
# (gcr.io/distroless/cc-debian12: of its libraries the binaries may use glibc
# 2.36 and libgcc_s, nothing else), prints
# their sizes, and builds the image when buildah or podman can.
#
#   charts/image/check.sh                  build the release binaries, then check
#   charts/image/check.sh --bin-dir DIR    check DIR/lanyard and DIR/lanyard-proxy
#   charts/image/check.sh --no-image       skip the image build
#   charts/image/check.sh --stand-in       when the base images cannot be pulled,
#       assemble a look-alike of the image from scratch (the binaries, the
#       libraries ldd names, copied from this machine, Debian's CA
#       certificates and a nonroot user), run both binaries in it, and print its size
#
# The release build goes to $CARGO_TARGET_DIR (default: the workspace's
# target/); give it a directory of its own to keep it apart from test builds.
# LANYARD_RUST_IMAGE and LANYARD_RUNTIME_IMAGE replace the Containerfile's base
# images (a mirror, or local stand-ins such as the one --stand-in leaves behind
# as localhost/cc-debian12-standin:nonroot).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

bin_dir=""
build_image=1
stand_in=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --no-image) build_image=0; shift ;;
    --stand-in) stand_in=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

bins=(lanyard lanyard-proxy)
# What the runtime base provides. The glibc of Debian 12, which both the build
# image (rust:*-bookworm) and distroless cc-debian12 carry.
allowed_libs='^(linux-vdso\.so\.1|ld-linux[-a-z0-9_.]*\.so\.[0-9]+|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$'
base_glibc="2.36"
image_tag="localhost/lanyard:check"
proxy_tag="localhost/lanyard-proxy:check"

if [ -z "$bin_dir" ]; then
  echo "== cargo build --release --locked -p lanyard -p lanyard-proxy"
  cargo build --release --locked -p lanyard -p lanyard-proxy
  bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
fi
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "check.sh: no executable $bin_dir/$b" >&2; exit 1; }
done

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=0
echo "== shared libraries (allowed: glibc ${base_glibc}'s libc/libm/libpthread/libdl/librt/ld-linux, libgcc_s, vdso)"
for b in "${bins[@]}"; do
  echo "-- $b"
  # ldd exits 1 on a static binary; that links nothing, which is fine.
  out="$(ldd "$bin_dir/$b" 2>&1 || true)"
  printf '   %s\n' "${out//$'\n'/$'\n'   }"
  if echo "$out" | grep -qE 'not a dynamic executable|statically linked'; then
    continue
  fi
  while read -r lib; do
    [ -n "$lib" ] || continue
    if ! [[ "$lib" =~ $allowed_libs ]]; then
      echo "FAIL: $b links $lib, which the runtime base does not provide" >&2
      failed=1
    fi
  done < <(echo "$out" | awk '{print $1}' | xargs -r -n1 basename)
  if echo "$out" | grep -q 'not found'; then
    echo "FAIL: $b needs a library this machine lacks" >&2
    failed=1
  fi
  # The newest glibc symbol version the binary needs must be in the base's glibc.
  need="$(objdump -T "$bin_dir/$b" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)*' | sed 's/GLIBC_//' | sort -V | tail -1)"
  echo "   newest glibc symbol version needed: ${need:-none}"
  if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$base_glibc" | sort -V | tail -1)" != "$base_glibc" ]; then
    echo "FAIL: $b needs glibc $need; the runtime base has $base_glibc (build it on Debian 12)" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1

echo "== sizes (bytes): as built / debug info stripped (what the image ships) / all symbols stripped"
for b in "${bins[@]}"; do
  strip --strip-debug -o "$scratch/$b" "$bin_dir/$b"
  strip --strip-all -o "$scratch/$b.all" "$bin_dir/$b"
  printf '   %-14s %10d  %10d  %10d\n' "$b" \
    "$(stat -c %s "$bin_dir/$b")" "$(stat -c %s "$scratch/$b")" "$(stat -c %s "$scratch/$b.all")"
done

[ "$build_image" -eq 1 ] || { echo "== image: skipped (--no-image)"; exit 0; }

# The image builder: buildah, or podman (which builds with buildah's code).
if command -v buildah >/dev/null 2>&1; then
  builder=buildah
elif command -v podman >/dev/null 2>&1; then
  builder=podman
else
  echo "== image: not built: neither buildah nor podman is installed (apt-get install buildah podman)"
  exit 0
fi
# RUN steps and the smoke test run under chroot isolation unless
# BUILDAH_ISOLATION says otherwise: on machines with hybrid cgroups (v1
# controllers beside a v2 hierarchy) crun refuses to create a container
# ("cgroups in hybrid mode not supported"), and chroot needs no OCI runtime.
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

# The base images, as the Containerfile names them.
rust_image="${LANYARD_RUST_IMAGE:-$(sed -n 's/^ARG RUST_IMAGE=//p' Containerfile)}"
runtime_image="${LANYARD_RUNTIME_IMAGE:-$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Containerfile)}"
unreachable=""
for img in "$rust_image" "$runtime_image"; do
  if "$builder" inspect --type image "$img" >/dev/null 2>&1; then
    continue
  fi
  if ! err="$("$builder" pull -q "$img" 2>&1 >/dev/null)"; then
    unreachable="cannot pull $img: $(echo "$err" | grep -v '^Trying' | tail -1)"
    break
  fi
done

# Starts each binary in the image as the image's user: the dynamic loader
# finds every library, and nothing needs a shell.
smoke_test() {
  local img="$1" ctr b
  shift
  if [ "$builder" = podman ]; then
    for b in "$@"; do
      printf '   %s --version in the image: ' "$b"
      podman run --rm --entrypoint "/usr/local/bin/$b" "$img" --version
    done
    return
  fi
  ctr="$(buildah from -q "$img")"
  for b in "$@"; do
    printf '   %s --version in the image: ' "$b"
    buildah run "$ctr" -- "/usr/local/bin/$b" --version
  done
  buildah rm "$ctr" >/dev/null
}

image_size() {
  local img="$1" tarball="$scratch/image.tar" bytes
  rm -f "$tarball"
  if [ "$builder" = podman ]; then
    podman save -q -o "$tarball" "$img"
  else
    buildah push -q "$img" "docker-archive:$tarball:$img" >/dev/null
  fi
  bytes="$(stat -c %s "$tarball")"
  printf '   %s: %d bytes uncompressed, %d bytes gzipped (about what a registry sends)\n' \
    "$img" "$bytes" "$(gzip -c "$tarball" | wc -c)"
  rm -f "$tarball"
}

if [ -z "$unreachable" ]; then
  echo "== $builder build -t $image_tag (the Rust build runs inside the build image)"
  build_args=(--build-arg "RUST_IMAGE=$rust_image" --build-arg "RUNTIME_IMAGE=$runtime_image")
  "$builder" build --layers --force-rm -f Containerfile -t "$image_tag" "${build_args[@]}" .
  # The agent's own image: the build stage comes from the layer cache.
  echo "== $builder build --target proxy -t $proxy_tag"
  "$builder" build --layers --force-rm -q -f Containerfile --target proxy -t "$proxy_tag" "${build_args[@]}" . >/dev/null
  smoke_test "$image_tag" "${bins[@]}"
  smoke_test "$proxy_tag" lanyard-proxy
  image_size "$image_tag"
  image_size "$proxy_tag"
  exit 0
fi

if [ "$stand_in" -eq 0 ]; then
  echo "== image: not built: $unreachable (--stand-in assembles a look-alike from this machine's libraries)"
  exit 0
fi
echo "== image: the Containerfile was not built: $unreachable"

# The look-alike: what distroless cc-debian12:nonroot holds that the binaries
# use (glibc, libgcc_s, CA certificates, the nonroot user, a /tmp), taken from
# this machine, which must be Debian 12 for the comparison to mean anything.
if [ "$(id -u)" -ne 0 ]; then
  echo "== stand-in: not built: assembling it mounts a container's filesystem, which needs root (or run it under 'buildah unshare')"
  exit 0
fi
if ! command -v buildah >/dev/null 2>&1; then
  echo "== stand-in: not built: it needs buildah"
  exit 0
fi
echo "== stand-in image from scratch ($(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)'s libraries)"
ctr="$(buildah from scratch)"
cleanup_ctr() { buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$scratch"; }
trap cleanup_ctr EXIT
mnt="$(buildah mount "$ctr")"
libs="$(for b in "${bins[@]}"; do ldd "$bin_dir/$b"; done \
  | grep -oE '/[^ ]+\.so[^ ]*' | sort -u)"
for lib in $libs; do
  install -D -m 0755 "$(readlink -f "$lib")" "$mnt$lib"
done
# Debian's CA set (what distroless ships), not this machine's bundle, which
# may carry local anchors.
install -d "$mnt/etc/ssl/certs"
cat /usr/share/ca-certificates/mozilla/*.crt > "$mnt/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$mnt/etc/ssl/certs/ca-certificates.crt"
install -d -m 1777 "$mnt/tmp"
install -d -m 0700 -o 65532 -g 65532 "$mnt/home/nonroot"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$mnt/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$mnt/etc/group"
buildah umount "$ctr" >/dev/null
buildah config --user 65532:65532 --workingdir /home/nonroot "$ctr"
base_tag="localhost/cc-debian12-standin:nonroot"
buildah commit -q --rm "$ctr" "$base_tag" >/dev/null
echo "   base $base_tag: $(echo "$libs" | tr '\n' ' ')CA certificates, user nonroot (65532)"

# The image on the stand-in base, as the Containerfile's last stage makes it.
ctr="$(buildah from -q "$base_tag")"
mnt="$(buildah mount "$ctr")"
for b in "${bins[@]}"; do
  install -D -m 0755 "$scratch/$b" "$mnt/usr/local/bin/$b"
done
buildah umount "$ctr" >/dev/null
buildah config --entrypoint '["/usr/local/bin/lanyard"]' "$ctr"
standin_tag="localhost/lanyard:stand-in"
buildah commit -q --rm "$ctr" "$standin_tag" >/dev/null
trap 'rm -rf "$scratch"' EXIT
smoke_test "$standin_tag" "${bins[@]}"
image_size "$base_tag"
image_size "$standin_tag"
echo "   (distroless cc-debian12 also carries tzdata, libssl3, libstdc++, libgomp and package metadata: expect the real image a little larger)"

#!/usr/bin/env bash
# A newer Mesa lavapipe (Vulkan on the CPU) that has cooperative matrices (VK_KHR_cooperative_matrix),
# so the tensor-core paths that CubeCL compiles to SPIR-V — Burn's cmma/mma matmul algorithms, its
# tensor-core flash kernel, the implicit-GEMM convolutions and Likeness' own cmma kernels — run on
# this 2-core box and in CI, not only on a lent GPU. Debian 12's lavapipe (Mesa 22.3) has none,
# and neither has bookworm-backports' (25.0); trixie-backports' Mesa 26 has. It needs trixie's C
# library, so it is unpacked into a folder of its own (nothing of the system changes) and a program
# runs under trixie's dynamic loader with that folder as its library path.
#
#   scripts/lavapipe-coopmat.sh install      fetch and unpack once (Debian's archive, ~60 MB)
#   scripts/lavapipe-coopmat.sh run CMD ...  run CMD under it (also as cargo's target runner)
#   scripts/lavapipe-coopmat.sh check        does the device advertise cooperative matrices?
#
# Under `run`, LIKENESS_EXPECT_CMMA=1 tells the tests that the device has cooperative matrices,
# so that a tensor-core path which falls back fails them instead of passing quietly.
set -euo pipefail
prefix="${LIKENESS_LAVAPIPE_COOPMAT:-$HOME/.cache/likeness/lavapipe-coopmat}"
libs="$prefix/root/usr/lib/x86_64-linux-gnu"
icd="$prefix/lvp_icd.json"

install() {
  if [ -f "$prefix/ok" ]; then return 0; fi
  [ "$(uname -m)" = x86_64 ] || { echo "lavapipe-coopmat: x86-64 only" >&2; exit 1; }
  local apt="$prefix/apt"
  rm -rf "$prefix"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources" "$prefix/debs"
  touch "$apt/status"
  cat >"$apt/sources/trixie.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # A private apt state with nothing installed: apt lists the whole closure of the packages.
  local o=(-o "Dir::State::Lists=$apt/lists" -o Dir::Etc::SourceList=/dev/null
    -o "Dir::Etc::SourceParts=$apt/sources" -o "Dir::Cache=$apt/cache"
    -o "Dir::State::status=$apt/status" -o APT::Default-Release=trixie
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  echo "lavapipe-coopmat: reading trixie's package lists" >&2
  apt-get "${o[@]}" -qq update
  apt-get "${o[@]}" -qq --print-uris -y --no-install-recommends install \
    mesa-vulkan-drivers/trixie-backports libvulkan1 vulkan-tools |
    awk -F"'" '/^'"'"'http/ {print $2}' >"$prefix/uris"
  [ -s "$prefix/uris" ] || { echo "lavapipe-coopmat: apt resolved no packages" >&2; exit 1; }
  echo "lavapipe-coopmat: fetching $(wc -l <"$prefix/uris") packages" >&2
  (cd "$prefix/debs" && xargs -n 8 curl -fsSL --remote-name-all <"$prefix/uris")
  for deb in "$prefix"/debs/*.deb; do dpkg-deb -x "$deb" "$prefix/root"; done
  sed "s#\"library_path\": *\"[^\"]*\"#\"library_path\": \"$libs/libvulkan_lvp.so\"#" \
    "$prefix/root/usr/share/vulkan/icd.d/lvp_icd.json" >"$icd"
  rm -rf "$prefix/debs" "$apt"
  if ! check >/dev/null; then
    echo "lavapipe-coopmat: the unpacked lavapipe advertises no VK_KHR_cooperative_matrix" >&2
    exit 1
  fi
  touch "$prefix/ok"
}

under() {
  # Only this lavapipe (no GPU driver, no layers), Mesa's shader cache kept beside it.
  export VK_DRIVER_FILES="$icd" VK_LOADER_LAYERS_DISABLE='~all~' LIKENESS_EXPECT_CMMA=1
  export MESA_SHADER_CACHE_DIR="${MESA_SHADER_CACHE_DIR:-$prefix/shader-cache}"
  exec "$libs/ld-linux-x86-64.so.2" --library-path "$libs" "$@"
}

check() {
  # Shown on stderr through the shell's own descriptor: `tee /dev/stderr` reopened the file that
  # stderr was redirected to and truncated it (CI's whole log before this step, twice).
  local info
  info=$( (under "$prefix/root/usr/bin/vulkaninfo" 2>/dev/null) |
    grep -E 'driverInfo|VK_KHR_cooperative_matrix' | sort -u) || true
  printf '%s\n' "$info" >&2
  grep -q VK_KHR_cooperative_matrix <<<"$info"
}

case "${1:-}" in
  install) install ;;
  run)
    shift
    [ -f "$prefix/ok" ] || { echo "lavapipe-coopmat: not installed ($0 install)" >&2; exit 1; }
    under "$@" ;;
  check) check ;;
  *) echo "usage: $0 install | run CMD... | check" >&2; exit 2 ;;
esac

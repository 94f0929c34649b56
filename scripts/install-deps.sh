#!/usr/bin/env bash
# Installs the system tools exp's build, tests and main job use: protoc (protobuf-compiler;
# candle-onnx compiles ONNX's schema at build time), git-lfs, ssh-keygen (openssh-client; a test
# signs a release tag with an SSH key) and a headless Chromium (tests render exp plot's report in
# it). Debian packages. Idempotent.
set -euo pipefail

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
git lfs version >/dev/null 2>&1 || need+=(git-lfs)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "install-deps: installing ${need[*]} from Debian" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
git lfs version >/dev/null

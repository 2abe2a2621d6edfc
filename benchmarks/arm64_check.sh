#!/usr/bin/env bash
# arm64_check.sh - run the edge runtime's tests on 64-bit ARM (Raspberry Pi class) from an x86_64
# Debian/Ubuntu host, under qemu user-mode emulation. As root:
#
#     bash benchmarks/arm64_check.sh
#
# It builds (once; then reuses) a Debian arm64 root, installs this working tree there with the
# base install only (`pip install .`, plus pytest and onnx for the tests), and runs the torch-free
# tests there on each emulated CPU. The outputs are checked by the tests themselves:
# tests/test_golden.py compares the bundled model's boxes and raw outputs with the golden file
# recorded on x86, so no second comparer is needed, and a real Pi checks itself with plain
# `pytest tests/test_golden.py` the same way. Emulated timings mean nothing.
#
# Exit status: 0 PASS, 1 FAIL (a test failed), 3 SETUP-FAIL (no root, binfmt_misc, qemu,
# debootstrap or network).
#
# Settings (environment):
#   EMO_ARM64_ROOT    the cached arm64 root (default /var/cache/emo-arm64/bookworm)
#   EMO_ARM64_SUITE   Debian suite (bookworm)      EMO_ARM64_MIRROR  (http://deb.debian.org/debian)
#   EMO_ARM64_CPUS    qemu CPU models (default "cortex-a72 cortex-a76": Raspberry Pi 4 and Pi 5;
#                     "cortex-a53" is a Pi Zero 2 W or Pi 3, the tiny model's devices)
#   EMO_SHARED_DATA   real photos and FER2013 for the real-data tests (default REPO/../shared/data;
#                     without it those tests skip, as anywhere)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${EMO_ARM64_ROOT:-/var/cache/emo-arm64/bookworm}
SUITE=${EMO_ARM64_SUITE:-bookworm}
MIRROR=${EMO_ARM64_MIRROR:-http://deb.debian.org/debian}
read -r -a CPUS <<<"${EMO_ARM64_CPUS:-cortex-a72 cortex-a76}"
SHARED=${EMO_SHARED_DATA:-$REPO/../shared/data}
TESTS="tests/test_golden.py tests/test_edge.py tests/test_preprocess.py tests/test_metadata.py tests/test_dataset.py tests/test_models.py"
SRC=/opt/emo-src VENV=/opt/emo-venv DATA=/opt/emo-data MARK=.emo-arm64-root

setup_fail() { echo "SETUP-FAIL: $*"; exit 3; }

cleanup() {
    local m
    for m in $(awk -v d="$ROOT/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}

# onnxruntime reads /proc/cpuinfo to pick its kernels; under qemu that is the x86 host's, so give
# each emulated CPU the implementer, part and features a Pi's kernel reports.
cpuinfo() {
    local imp part var rev feats i
    case $1 in
    cortex-a53) read -r imp part var rev feats <<<"0x41 0xd03 0x0 4 fp asimd evtstrm crc32 cpuid" ;;
    cortex-a72) read -r imp part var rev feats <<<"0x41 0xd08 0x0 3 fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76) read -r imp part var rev feats <<<"0x41 0xd0b 0x4 1 fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) return 0 ;;
    esac
    for ((i = 0; i < $(nproc); i++)); do
        printf 'processor\t: %d\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$feats" "$imp" "$var" "$part" "$rev"
    done
}

in_root() { # in_root CPU CMD...
    local cpu=$1
    shift
    mountpoint -q "$ROOT/proc/cpuinfo" && umount "$ROOT/proc/cpuinfo"
    cpuinfo "$cpu" >"$ROOT/etc/emo-cpuinfo"
    [[ -s $ROOT/etc/emo-cpuinfo ]] && mount --bind "$ROOT/etc/emo-cpuinfo" "$ROOT/proc/cpuinfo"
    nice -n 19 env -i HOME=/root LANG=C.UTF-8 PATH="$VENV/bin:/usr/bin:/bin" QEMU_CPU="$cpu" EMO_TEST_CLI_TIMEOUT=3600 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1 ${ROOT_CA:+PIP_CERT=$ROOT_CA} \
        EMO_SHARED_DATA="$EMO_DATA" ${https_proxy:+https_proxy=$https_proxy} "$CHROOT" "$ROOT" "$@"
}

# --- the host: root, qemu-aarch64 registered with binfmt_misc, debootstrap
[[ $(id -u) == 0 ]] || setup_fail "needs root (mount, chroot, debootstrap); run it with sudo"
CHROOT=$(PATH=$PATH:/usr/sbin:/sbin command -v chroot) || setup_fail "no chroot command (coreutils)"  # /usr/sbin: not on env -i's PATH
[[ $(uname -m) == x86_64 ]] || setup_fail "host is $(uname -m); on an arm64 machine just run pytest"
case $ROOT in /|/usr*|/etc*|/bin*|/lib*|/home|"$REPO"*) setup_fail "EMO_ARM64_ROOT=$ROOT is not a safe place for a throw-away root" ;; esac
if ! command -v debootstrap >/dev/null || [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || setup_fail "binfmt_misc is not mounted and cannot be (a container without the privilege?)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static binfmt-support \
        || setup_fail "cannot install debootstrap and qemu-user-static"
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || setup_fail "no qemu-aarch64 binfmt handler registered"
trap cleanup EXIT

# --- the arm64 root, built once
if [[ ! -f $ROOT/$MARK ]]; then
    [[ -z $(ls -A "$ROOT" 2>/dev/null) ]] || setup_fail "$ROOT exists but is not a finished emo arm64 root; remove it"
    echo "debootstrap --arch=arm64 $SUITE into $ROOT (a few minutes)"
    rm -rf --one-file-system "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$ROOT.partial" "$MIRROR" >/tmp/emo-debootstrap.log 2>&1 \
        || { tail -n 20 /tmp/emo-debootstrap.log; setup_fail "debootstrap failed (network?)"; }
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || cp /usr/bin/qemu-aarch64-static "$ROOT.partial/usr/bin/"
    date -u +%FT%TZ >"$ROOT.partial/$MARK"
    rmdir "$ROOT" 2>/dev/null || true
    mv "$ROOT.partial" "$ROOT"
fi
# /proc and /dev only: onnxruntime crashes under qemu when it reads the host's /sys CPU topology.
# Its cpuinfo library still wants the CPU lists (else it prints errors on every start, which
# the one-line-error tests see): plain files that match the emulated /proc/cpuinfo.
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
mountpoint -q "$ROOT/sys" && setup_fail "$ROOT/sys is mounted; unmount it (onnxruntime crashes under qemu with the host's /sys)"
mkdir -p "$ROOT/sys/devices/system/cpu"
for f in possible present online; do echo "0-$(($(nproc) - 1))" >"$ROOT/sys/devices/system/cpu/$f"; done
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# a host behind a TLS-inspecting proxy trusts its CA through PIP_CERT or SSL_CERT_FILE: so does the root's pip
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-}} ROOT_CA=""
[[ -n $HOST_CA && -f $HOST_CA ]] && cp -L "$HOST_CA" "$ROOT/etc/emo-host-ca.crt" && ROOT_CA=/etc/emo-host-ca.crt
EMO_DATA=""
if [[ -d $SHARED/fer2013 ]]; then
    mkdir -p "$ROOT$DATA" && mount --bind -o ro "$(cd "$SHARED" && pwd)" "$ROOT$DATA" && EMO_DATA=$DATA
    if [[ -d $SHARED/../models ]]; then  # the YuNet detector, which the tests find beside the data
        mkdir -p "$ROOT$(dirname "$DATA")/models" && mount --bind -o ro "$(cd "$SHARED/../models" && pwd)" "$ROOT$(dirname "$DATA")/models"
    fi
fi

# --- the working tree, installed as a Pi user would (base install) plus the test tools
rm -rf "$ROOT$SRC" && mkdir -p "$ROOT$SRC"
(cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 -r ls -d 2>/dev/null | tar -cf - -T -) | tar -C "$ROOT$SRC" -xf -
[[ -x $ROOT$VENV/bin/python ]] || in_root "${CPUS[0]}" python3 -m venv "$VENV" || setup_fail "python3 -m venv failed"
in_root "${CPUS[0]}" pip install -q "$SRC" pytest onnx || setup_fail "pip install failed on arm64 (network, or no aarch64 wheel?)"
in_root "${CPUS[0]}" python -c "import importlib.util as u; assert not u.find_spec('torch'), 'torch in the edge venv'" \
    || setup_fail "the arm64 venv holds torch; remove $ROOT$VENV"

# --- the tests, on each CPU
status=0
for cpu in "${CPUS[@]}"; do
    echo "=== pytest on aarch64, qemu CPU $cpu (EMO_SHARED_DATA=${EMO_DATA:-unset})"
    in_root "$cpu" /bin/sh -c "cd $SRC && python -m pytest -p no:cacheprovider -q -rfEs $TESTS" || status=1
done
((status == 0)) && echo "PASS" || echo "FAIL"
exit $status

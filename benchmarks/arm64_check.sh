#!/usr/bin/env bash
# arm64_check.sh - does the emo edge runtime give the same answers on 64-bit ARM (Raspberry Pi
# class) as on x86_64?
#
# On an x86_64 Debian/Ubuntu host, as root:
#
#     bash benchmarks/arm64_check.sh
#
# It builds (or reuses) a Debian arm64 root under qemu user-mode emulation, installs this working
# tree there with the base install only (`pip install .`: numpy, onnxruntime, opencv), runs the
# torch-free tests inside it, then runs `emo-edge infer --format json` and
# `Classifier(model).predict` on the same real photos, FER2013 crops and a short video on both
# sides and compares faces, boxes and scores. Emulated timings mean nothing; outputs do.
#
# Exit status: 0 PASS, 1 FAIL (a test failed or an output differs), 3 SETUP-FAIL (no root, no
# binfmt_misc, no qemu, no network for debootstrap/pip, missing x86 venv or data).
#
# Settings (environment):
#   EMO_ARM64_ROOT        the cached arm64 root (default /var/cache/emo-arm64/bookworm)
#   EMO_ARM64_SUITE       Debian suite (bookworm)          EMO_ARM64_MIRROR  (http://deb.debian.org/debian)
#   EMO_ARM64_CPUS        qemu CPU models, space separated (default "cortex-a72 cortex-a76": the
#                         Raspberry Pi 4 and Pi 5 cores). Tests and `emo-edge infer` run on the
#                         first; the raw-probability comparison runs on every one.
#   EMO_ARM64_FP32_MODEL  an fp32 emo ONNX model to compare as well (optional)
#   EMO_X86_PYTHON        the x86 Python with emo installed (default: REPO/.venv/bin/python)
#   EMO_SHARED_DATA       the shared data folder (default: REPO/../shared/data)
#   EMO_ARM64_PIN         1 (default): install on arm64 the numpy/onnxruntime/opencv versions the
#                         x86 Python has, so both sides run the same library versions; 0: latest
#   EMO_ARM64_INSTALL_HOST 1 (default): apt-get install qemu-user-static/debootstrap when missing
#   EMO_ARM64_INT8_TOL    max |probability diff| for the int8 model on identical tensors (1e-6)
#   EMO_ARM64_FP32_TOL    the same for fp32 models (1e-5)
#   EMO_ARM64_INT8_JSON_TOL  max score diff in the JSON, percentage points, int8 (default 0)
#   EMO_ARM64_FP32_JSON_TOL  the same for fp32 (default 0.02; the JSON rounds to 0.01)
#   EMO_ARM64_STRICT_VIDEO 1: fail when a video decodes to different pixels on the two sides and
#                         the outputs differ because of it (default 0: reported as a WARNING; a
#                         lossless copy of the x86-decoded frames must still match exactly)
#   EMO_ARM64_FER_PER_CLASS  FER2013 val images per class for the raw comparison (150: 956 crops)
#   EMO_ARM64_KEEP        1: keep the x86-side work folder (default: removed at the end)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${EMO_ARM64_ROOT:-/var/cache/emo-arm64/bookworm}
SUITE=${EMO_ARM64_SUITE:-bookworm}
MIRROR=${EMO_ARM64_MIRROR:-http://deb.debian.org/debian}
read -r -a CPUS <<<"${EMO_ARM64_CPUS:-cortex-a72 cortex-a76}"
FP32_MODEL=${EMO_ARM64_FP32_MODEL:-}
X86_PY=${EMO_X86_PYTHON:-$REPO/.venv/bin/python}
SHARED=${EMO_SHARED_DATA:-$REPO/../shared/data}
PIN=${EMO_ARM64_PIN:-1}
INSTALL_HOST=${EMO_ARM64_INSTALL_HOST:-1}
INT8_TOL=${EMO_ARM64_INT8_TOL:-1e-6}
FP32_TOL=${EMO_ARM64_FP32_TOL:-1e-5}
INT8_JSON_TOL=${EMO_ARM64_INT8_JSON_TOL:-0}
FP32_JSON_TOL=${EMO_ARM64_FP32_JSON_TOL:-0.02}
STRICT_VIDEO=${EMO_ARM64_STRICT_VIDEO:-0}
FER_PER_CLASS=${EMO_ARM64_FER_PER_CLASS:-150}
NICE=(nice -n 19)

# Paths inside the arm64 root.
VENV=/opt/emo-venv            # base install only: what a Pi user gets from `pip install .`
TVENV=/opt/emo-test-venv      # base install + pytest + onnx (test_edge.py edits model metadata with onnx)
SRC=/opt/emo-src              # copy of the working tree
DATA=/opt/emo-data            # data/{photos,fer2013} and models/face_detection_yunet.onnx
CHK=/opt/emo-check            # this run's inputs and outputs
HELPER=benchmarks/arm64_compare.py
ROOT_MARK=.emo-arm64-root

SETUP_FAIL_CODE=3
RUN_START=$(date +%s)
STEP_NAMES=()
STEP_SECS=()
PROBLEMS=()
WARNINGS=()
RESULTS=()
DECODER_DIFF=()               # videos whose decoded pixels differ between the two sides
WORK=""
MOUNTED=0
CURRENT_STEP=""
VERDICT=0                     # 1 once PASS/FAIL/SETUP-FAIL has been printed
EMO_ENV=()                    # extra VAR=value settings for in_root
PROXY_ENV=()                  # the host's proxy settings, passed into the root
ROOT_CA=/etc/ssl/certs/emo-host-ca-certificates.crt  # the host's CA bundle, inside the root

# ----------------------------------------------------------------------------- plumbing
log() { printf '%s\n' "$*"; }
setup_fail() {
    log ""
    log "SETUP-FAIL: $*"
    VERDICT=1
    exit "$SETUP_FAIL_CODE"
}
problem() { PROBLEMS+=("$*"); log "  PROBLEM: $*"; }
warning() { WARNINGS+=("$*"); log "  WARNING: $*"; }

step() { # step NAME FUNCTION [ARGS...]: run one step, timing it
    local name=$1
    shift
    log ""
    log "=== $name"
    CURRENT_STEP=$name
    local t0
    t0=$(date +%s.%N)
    "$@"
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    STEP_NAMES+=("$name")
    STEP_SECS+=("$dt")
    log "--- $name: ${dt}s"
}

print_times() {
    ((${#STEP_NAMES[@]})) || return 0
    log ""
    log "Time per step (seconds, emulated steps are slow by design):"
    local i
    for i in "${!STEP_NAMES[@]}"; do
        printf '  %8s  %s\n' "${STEP_SECS[$i]}" "${STEP_NAMES[$i]}"
    done
    printf '  %8s  %s\n' "$(($(date +%s) - RUN_START))" "total"
}

umount_root() {
    local m
    for m in proc/cpuinfo dev proc; do
        if grep -q " $ROOT/$m " /proc/mounts; then
            umount "$ROOT/$m" 2>/dev/null || umount -l "$ROOT/$m" || true
        fi
    done
    MOUNTED=0
}

on_exit() {
    local rc=$?
    ((MOUNTED)) && umount_root
    if [[ -n $WORK && -d $WORK && ${EMO_ARM64_KEEP:-0} != 1 ]]; then
        rm -rf "$WORK"
    elif [[ -n $WORK ]]; then
        log "x86-side work folder kept: $WORK"
    fi
    if ((VERDICT == 0)); then
        print_times
        log ""
        log "FAIL: the check stopped early in step '$CURRENT_STEP' (status $rc; see the output above)"
        rc=1
    fi
    exit "$rc"
}
trap on_exit EXIT

in_root() { # in_root CPU CMD...: run CMD inside the arm64 root, emulating CPU, at low priority
    local cpu=$1
    shift
    bind_cpuinfo "$cpu"
    "${NICE[@]}" env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        QEMU_CPU="$cpu" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        PIP_CACHE_DIR=/var/cache/emo-pip PYTHONDONTWRITEBYTECODE=1 \
        PIP_CERT=$ROOT_CA SSL_CERT_FILE=$ROOT_CA REQUESTS_CA_BUNDLE=$ROOT_CA \
        "${PROXY_ENV[@]}" "${EMO_ENV[@]}" \
        chroot "$ROOT" "$@"
}

# A Raspberry-Pi-like /proc/cpuinfo per qemu CPU model (implementer, part, variant, revision,
# Features). Under qemu user mode the programs otherwise read the x86 host's /proc/cpuinfo, and
# onnxruntime's cpuinfo library prints warnings to stderr ("Unknown CPU vendor") on every start.
# Kernel choices in onnxruntime follow HWCAP, which qemu sets from the CPU model.
cpu_table() {
    case $1 in
    cortex-a53) echo "0x41 0xd03 0x0 4 fp asimd evtstrm crc32 cpuid" ;;
    cortex-a57) echo "0x41 0xd07 0x1 1 fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
    cortex-a72) echo "0x41 0xd08 0x0 3 fp asimd evtstrm crc32 cpuid" ;;                # Raspberry Pi 4
    cortex-a76) echo "0x41 0xd0b 0x4 1 fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;; # Pi 5
    neoverse-n1) echo "0x41 0xd0c 0x3 1 fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
    *) echo "" ;;
    esac
}

fake_cpu_files() { # FILES under the root that a real ARM kernel would provide
    local n cpu i
    n=$(nproc)
    if ! grep -q " $ROOT/sys " /proc/mounts; then
        mkdir -p "$ROOT/sys/devices/system/cpu"
        for f in possible present online; do echo "0-$((n - 1))" >"$ROOT/sys/devices/system/cpu/$f"; done
    fi
    mkdir -p "$ROOT/etc/emo-cpuinfo"
    for cpu in "${CPUS[@]}"; do
        read -r imp part var rev feats <<<"$(cpu_table "$cpu")"
        if [[ -z ${imp:-} ]]; then
            rm -f "$ROOT/etc/emo-cpuinfo/$cpu"
            log "  no /proc/cpuinfo template for qemu CPU $cpu: onnxruntime will warn about an unknown CPU vendor"
            continue
        fi
        for ((i = 0; i < n; i++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
                "$i" "$feats" "$imp" "$var" "$part" "$rev"
        done >"$ROOT/etc/emo-cpuinfo/$cpu"
    done
}

bind_cpuinfo() {
    local f=$ROOT/etc/emo-cpuinfo/$1
    grep -q " $ROOT/proc/cpuinfo " /proc/mounts && umount "$ROOT/proc/cpuinfo"
    [[ -f $f ]] && mount --bind "$f" "$ROOT/proc/cpuinfo"
    return 0
}

quiet() { # quiet LOGFILE CMD...: run CMD with its output in LOGFILE, show the tail if it fails
    local logf=$1
    shift
    if ! "$@" >"$logf" 2>&1; then
        tail -n 25 "$logf" | sed 's/^/    | /'
        return 1
    fi
}

# ----------------------------------------------------------------------------- steps
check_host() {
    [[ $(id -u) == 0 ]] || setup_fail "needs root (mount, chroot, debootstrap); run it with sudo"
    [[ $(uname -m) == x86_64 ]] || setup_fail "host is $(uname -m); this check compares x86_64 with emulated aarch64"
    [[ -x $X86_PY ]] || setup_fail "x86 Python $X86_PY not found (set EMO_X86_PYTHON to a Python with emo installed)"
    "$X86_PY" -c "import emo.edge_runtime.classifier" 2>/dev/null \
        || setup_fail "$X86_PY cannot import emo.edge_runtime (pip install . into it first)"
    X86_BIN=$(dirname "$X86_PY")
    [[ -x $X86_BIN/emo-edge ]] || setup_fail "no emo-edge next to $X86_PY"
    [[ -d $SHARED/photos && -d $SHARED/fer2013/val ]] \
        || setup_fail "shared data not found at $SHARED (set EMO_SHARED_DATA to the folder holding photos/ and fer2013/)"
    SHARED=$(cd "$SHARED" && pwd)
    if [[ -n $FP32_MODEL ]]; then
        [[ -f $FP32_MODEL ]] || setup_fail "EMO_ARM64_FP32_MODEL=$FP32_MODEL does not exist"
        FP32_MODEL=$(readlink -f "$FP32_MODEL")
    fi
    case $ROOT in /|/usr|/usr/*|/etc|/etc/*|/bin|/lib|/home|"$REPO"|"$REPO"/*)
        setup_fail "EMO_ARM64_ROOT=$ROOT is not a safe place for a throw-away root (must be outside the repo)" ;;
    esac
    WORK=$(mktemp -d /tmp/emo-arm64-check.XXXXXX)
    mkdir -p "$WORK/logs"
    log "repo $REPO; arm64 root $ROOT; x86 python $X86_PY; data $SHARED; qemu CPUs: ${CPUS[*]}"
    log "fp32 model: ${FP32_MODEL:-none (set EMO_ARM64_FP32_MODEL to compare one)}"
}

install_host_tools() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    [[ -e /usr/bin/qemu-aarch64-static || -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ]] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    if ((${#need[@]})); then
        [[ $INSTALL_HOST == 1 ]] || setup_fail "missing host packages: ${need[*]} (EMO_ARM64_INSTALL_HOST=0)"
        command -v apt-get >/dev/null || setup_fail "missing host packages ${need[*]} and no apt-get to install them"
        log "installing host packages: ${need[*]}"
        quiet "$WORK/logs/apt.log" apt-get update -qq || setup_fail "apt-get update failed (no network?)"
        DEBIAN_FRONTEND=noninteractive quiet "$WORK/logs/apt.log" "${NICE[@]}" apt-get install -y -qq "${need[@]}" \
            || setup_fail "apt-get install ${need[*]} failed"
    else
        log "host tools present: debootstrap, qemu-user-static, binfmt-support"
    fi
}

mount_binfmt() { # before installing qemu-user-static, so that its install registers the handlers
    local bm=/proc/sys/fs/binfmt_misc
    if [[ ! -e $bm/register ]]; then
        mount -t binfmt_misc binfmt_misc "$bm" 2>/dev/null \
            || setup_fail "binfmt_misc is not mounted and cannot be mounted (a container without the privilege?)"
        log "mounted binfmt_misc"
    else
        log "binfmt_misc already mounted"
    fi
}

setup_binfmt() {
    local bm=/proc/sys/fs/binfmt_misc
    if [[ ! -e $bm/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if [[ ! -e $bm/qemu-aarch64 ]]; then
        update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    [[ -e $bm/qemu-aarch64 ]] || setup_fail "no qemu-aarch64 binfmt handler registered ($bm/qemu-aarch64 missing)"
    grep -q '^enabled' "$bm/qemu-aarch64" || echo 1 >"$bm/qemu-aarch64" \
        || setup_fail "the qemu-aarch64 binfmt handler is disabled and cannot be enabled"
    QEMU_FIX_BINARY=0
    grep -q '^flags:.*F' "$bm/qemu-aarch64" && QEMU_FIX_BINARY=1
    log "binfmt qemu-aarch64: $(sed -n 's/^interpreter //p' "$bm/qemu-aarch64") ($(grep '^flags' "$bm/qemu-aarch64"))"
}

unmount_under() { # unmount anything mounted below a folder (a failed debootstrap can leave proc/sys)
    local dir=$1 m
    for m in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}

build_root() {
    if [[ -f $ROOT/$ROOT_MARK && -x $ROOT/usr/bin/python3 ]]; then
        log "reusing the arm64 root $ROOT (built $(cat "$ROOT/$ROOT_MARK"))"
        return
    fi
    if [[ -e $ROOT ]] && [[ -n $(ls -A "$ROOT" 2>/dev/null) ]]; then
        setup_fail "$ROOT exists but is not a finished emo arm64 root (no $ROOT_MARK); remove it or set EMO_ARM64_ROOT elsewhere"
    fi
    local part=$ROOT.partial
    if [[ -e $part ]]; then
        log "removing an unfinished root $part"
        unmount_under "$part"
        rm -rf --one-file-system "$part"
    fi
    mkdir -p "$(dirname "$ROOT")"
    log "debootstrap --arch=arm64 $SUITE (a few minutes; log in $WORK/logs/debootstrap.log)"
    quiet "$WORK/logs/debootstrap.log" "${NICE[@]}" debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates "$SUITE" "$part" "$MIRROR" \
        || { unmount_under "$part"; setup_fail "debootstrap of Debian $SUITE arm64 from $MIRROR failed (no network? see the log above)"; }
    unmount_under "$part"
    if ((QEMU_FIX_BINARY == 0)); then # the handler opens qemu inside the root: put it there
        cp /usr/bin/qemu-aarch64-static "$part/usr/bin/"
    fi
    date -u +%Y-%m-%dT%H:%M:%SZ >"$part/$ROOT_MARK"
    rmdir "$ROOT" 2>/dev/null || true
    mv "$part" "$ROOT"
}

mount_root() {
    # /proc and /dev only. Never /sys: onnxruntime crashes under qemu when it can read the
    # host's /sys CPU topology. In its place: the few CPU files a Pi's kernel has (fake_cpu_files).
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    MOUNTED=1
    fake_cpu_files
    # network as the host has it: DNS, its CA bundle (a TLS-inspecting proxy's CA included), proxies
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    if [[ -f $ca ]]; then
        cp -L "$ca" "$ROOT$ROOT_CA"
    else
        cp -L "$ROOT/etc/ssl/certs/ca-certificates.crt" "$ROOT$ROOT_CA"
    fi
    local v
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n ${!v:-} ]] && PROXY_ENV+=("$v=${!v}")
    done
    local arch
    arch=$(in_root "${CPUS[0]}" uname -m 2>&1) || setup_fail "cannot run arm64 programs in $ROOT: $arch"
    [[ $arch == aarch64 ]] || setup_fail "uname -m inside the root says '$arch', not aarch64"
}

copy_tree() { # the working tree as git sees it (tracked + untracked, not ignored), or all but caches
    local dest=$1
    rm -rf "$dest"
    mkdir -p "$dest"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 -r ls -d 2>/dev/null | tar -cf - -T -) | tar -C "$dest" -xf -
    else
        tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
            --exclude=__pycache__ -cf - . | tar -C "$dest" -xf -
    fi
}

install_project() {
    copy_tree "$ROOT$SRC"
    log "copied the working tree to $SRC ($(find "$ROOT$SRC" -type f | wc -l) files)"
    mkdir -p "$ROOT$CHK"
    local pins=$ROOT$CHK/pins.txt
    : >"$pins"
    if [[ $PIN == 1 ]]; then
        "$X86_PY" - >"$pins" <<'EOF'
import importlib.metadata as md
for d in ("numpy", "onnxruntime", "opencv-python-headless"):
    print(f"{d}=={md.version(d)}")
EOF
        log "pinning the x86 versions: $(tr '\n' ' ' <"$pins")"
    fi
    local v
    for v in "$VENV" "$TVENV"; do
        if [[ ! -x $ROOT$v/bin/python ]]; then
            log "creating the venv $v"
            in_root "${CPUS[0]}" python3 -m venv "$v" || setup_fail "python3 -m venv failed in the arm64 root"
        fi
    done
    log "pip install $SRC into $VENV (base install only)"
    quiet "$WORK/logs/pip-base.log" in_root "${CPUS[0]}" "$VENV/bin/pip" install -c "$CHK/pins.txt" "$SRC" \
        || setup_fail "pip install . failed on arm64 (no network to PyPI, or no aarch64 wheel?)"
    grep -E "^Successfully installed" "$WORK/logs/pip-base.log" | sed 's/^/    /' || true
    log "pip install $SRC pytest onnx into $TVENV (for the tests)"
    quiet "$WORK/logs/pip-test.log" in_root "${CPUS[0]}" "$TVENV/bin/pip" install -c "$CHK/pins.txt" "$SRC" pytest onnx \
        || setup_fail "pip install . pytest onnx failed on arm64"
    grep -E "^Successfully installed" "$WORK/logs/pip-test.log" | sed 's/^/    /' || true
    local extra
    extra=$(in_root "${CPUS[0]}" "$VENV/bin/pip" list --format=freeze 2>/dev/null | grep -iE '^(torch|onnx)==' || true)
    [[ -z $extra ]] || problem "the base-install venv holds $extra"
    extra=$(in_root "${CPUS[0]}" "$TVENV/bin/pip" list --format=freeze 2>/dev/null | grep -iE '^torch==' || true)
    [[ -z $extra ]] || problem "the test venv holds $extra"
    # the installed package (code and bundled model) must be this working tree's
    local pkg
    pkg=$(in_root "${CPUS[0]}" "$VENV/bin/python" -c "import emo.edge_runtime, pathlib; print(pathlib.Path(emo.edge_runtime.__file__).parent)")
    [[ $(tree_hash "$ROOT$pkg") == "$(tree_hash "$ROOT$SRC/edge_runtime")" ]] \
        || problem "the emo package installed on arm64 differs from the copied working tree"
    check_tree_unchanged
}

tree_hash() { # one hash over the files of a folder (caches excluded)
    (cd "$1" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 md5sum) | md5sum | cut -d' ' -f1
}

check_tree_unchanged() {
    # x86 runs the working tree (REPO/edge_runtime); aarch64 runs the copy made at install time.
    # If someone changed the tree since (a new bundled model, say), the comparison is void.
    local x86_pkg
    x86_pkg=$("$X86_PY" -c "import emo.edge_runtime, pathlib; print(pathlib.Path(emo.edge_runtime.__file__).parent)")
    if [[ $(tree_hash "$x86_pkg") != "$(tree_hash "$ROOT$SRC/edge_runtime")" ]]; then
        setup_fail "the x86 emo package ($x86_pkg) no longer matches the copy installed on aarch64: the working tree changed during the check, or $X86_PY has another emo installed; run it again"
    fi
}

show_versions() {
    local cpu
    for cpu in "${CPUS[@]}"; do
        log "aarch64 as qemu CPU $cpu:"
        in_root "$cpu" "$VENV/bin/python" - <<'EOF' | sed 's/^/  /'
import ctypes, os, platform
import cv2, numpy, onnxruntime
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
hw, hw2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
feats = [n for n, on in (("asimd", hw >> 1 & 1), ("fphp", hw >> 9 & 1), ("asimddp", hw >> 20 & 1),
                         ("sve", hw >> 22 & 1), ("i8mm", hw2 >> 13 & 1), ("bf16", hw2 >> 14 & 1)) if on]
print(f"uname -m: {os.uname().machine}  python {platform.python_version()}  numpy {numpy.__version__}  "
      f"onnxruntime {onnxruntime.__version__}  opencv {cv2.__version__}")
print(f"CPU features seen by the program (HWCAP): {' '.join(feats) or 'none'}")
EOF
    done
    RESULTS+=("aarch64 ($(in_root "${CPUS[0]}" "$VENV/bin/python" -c "import platform, cv2, numpy, onnxruntime; print(f'uname -m {platform.machine()}, python {platform.python_version()}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, opencv {cv2.__version__}')"); qemu CPUs ${CPUS[*]})")
    log "x86_64 reference:"
    "$X86_PY" -c "import platform, cv2, numpy, onnxruntime; print(f'  uname -m: {platform.machine()}  python {platform.python_version()}  numpy {numpy.__version__}  onnxruntime {onnxruntime.__version__}  opencv {cv2.__version__}')"
}

prepare_inputs() {
    # test data inside the root, in the layout tests/conftest.py expects
    "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" subset-data "$SHARED" "$ROOT$DATA" --train 150 --val 150 | sed 's/^/  /'
    # the inputs both sides run: every photo, the example image, a 30-frame video made on x86
    rm -rf "$ROOT$CHK/in" "$ROOT$CHK/out" "$ROOT$CHK/models"
    mkdir -p "$ROOT$CHK/in" "$ROOT$CHK/out" "$ROOT$CHK/models" "$WORK/out"
    local f
    for f in "$SHARED"/photos/*; do
        case ${f,,} in *.jpg|*.jpeg|*.png) cp "$f" "$ROOT$CHK/in/" ;; esac
    done
    cp "$REPO/examples/astronaut.png" "$ROOT$CHK/in/example_astronaut.png"
    "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" make-video "$REPO/examples/astronaut.png" "$ROOT$CHK/in/clip.avi" --frames 30 | sed 's/^/  /'
    cp -r "$ROOT$CHK/in" "$WORK/in"
    MODELS=(int8)
    if [[ -n $FP32_MODEL ]]; then
        cp "$FP32_MODEL" "$ROOT$CHK/models/fp32.onnx"
        cp "$FP32_MODEL" "$WORK/fp32.onnx"
        local prec
        prec=$("$X86_PY" -c "from emo.edge_runtime.classifier import Classifier; print(Classifier('$WORK/fp32.onnx').meta.precision)")
        [[ $prec == fp32 ]] || log "  note: EMO_ARM64_FP32_MODEL's metadata says precision '$prec'"
        MODELS+=(fp32)
    fi
    log "  inputs: $(ls "$WORK/in" | tr '\n' ' ')"
}

check_videos() {
    # OpenCV decodes videos with its bundled FFmpeg, whose SIMD code may differ per architecture.
    # Compare the decoded pixels; and add a lossless (FFV1) copy of the x86-decoded clip, which
    # both sides must decode, and then classify, identically.
    "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" video-frames "$WORK/in/clip.avi" "$WORK/frames-x86-clip.avi.npz" | sed 's/^/  x86: /'
    "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" lossless-copy "$WORK/frames-x86-clip.avi.npz" "$WORK/in/clip_lossless.avi" | sed 's/^/  x86: /'
    cp "$WORK/in/clip_lossless.avi" "$ROOT$CHK/in/"
    local name out rc
    for name in clip.avi clip_lossless.avi; do
        [[ -f $WORK/frames-x86-$name.npz ]] || "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" video-frames "$WORK/in/$name" "$WORK/frames-x86-$name.npz" | sed 's/^/  x86: /'
        in_root "${CPUS[0]}" "$VENV/bin/python" "$SRC/$HELPER" video-frames "$CHK/in/$name" "$CHK/frames-arm-$name.npz" | sed "s/^/  aarch64: /"
        rc=0
        out=$("$X86_PY" "$REPO/$HELPER" compare-frames "$WORK/frames-x86-$name.npz" "$ROOT$CHK/frames-arm-$name.npz") || rc=$?
        log "  $name decoded on x86_64 vs aarch64: $out"
        RESULTS+=("video decoding, $name: $out")
        if ((rc != 0)); then
            if [[ $name == clip_lossless.avi ]]; then
                problem "the lossless clip decodes to different pixels on aarch64"
            else
                DECODER_DIFF+=("$name")
            fi
        fi
    done
}

run_tests() {
    local tests="tests/test_edge.py tests/test_preprocess.py tests/test_metadata.py tests/test_dataset.py"
    log "pytest $tests (qemu CPU ${CPUS[0]}, EMO_SHARED_DATA=$DATA/data)"
    local rc=0
    EMO_ENV=(EMO_SHARED_DATA="$DATA/data")
    in_root "${CPUS[0]}" /bin/sh -c "cd $SRC && exec $TVENV/bin/python -m pytest -p no:cacheprovider -q -rfEs $tests" \
        >"$WORK/logs/pytest.log" 2>&1 || rc=$?
    EMO_ENV=()
    sed 's/^/  | /' "$WORK/logs/pytest.log"
    local summary
    summary=$(grep -E '(passed|failed|error)' "$WORK/logs/pytest.log" | tail -n 1)
    if ((rc == 0)); then
        RESULTS+=("torch-free tests on aarch64: $summary")
    else
        problem "torch-free tests on aarch64 failed (pytest status $rc): $summary"
    fi
}

infer_both_sides() {
    check_tree_unchanged
    local m f name args=()
    for m in "${MODELS[@]}"; do
        mkdir -p "$ROOT$CHK/out/$m" "$WORK/out/$m"
        for f in "$WORK"/in/*; do
            name=$(basename "$f")
            args=()
            [[ $m == fp32 ]] && args=(--model "$WORK/fp32.onnx")
            "${NICE[@]}" "$X86_BIN/emo-edge" infer "$f" --format json "${args[@]}" \
                >"$WORK/out/$m/$name.jsonl" 2>"$WORK/out/$m/$name.err" \
                || problem "x86 emo-edge infer $name ($m) failed: $(tail -n 1 "$WORK/out/$m/$name.err")"
            [[ $m == fp32 ]] && args=(--model "$CHK/models/fp32.onnx")
            in_root "${CPUS[0]}" "$VENV/bin/emo-edge" infer "$CHK/in/$name" --format json "${args[@]}" \
                >"$ROOT$CHK/out/$m/$name.jsonl" 2>"$ROOT$CHK/out/$m/$name.err" \
                || problem "aarch64 emo-edge infer $name ($m) failed: $(tail -n 1 "$ROOT$CHK/out/$m/$name.err")"
            if [[ -s $ROOT$CHK/out/$m/$name.err ]]; then
                log "  aarch64 stderr for $name ($m): $(head -c 300 "$ROOT$CHK/out/$m/$name.err")"
            fi
        done
        log "  $m model: $(ls "$WORK/in" | wc -l) inputs run on both sides"
    done
}

compare_json() {
    local m tol f name out rc gated info
    for m in "${MODELS[@]}"; do
        tol=$INT8_JSON_TOL
        [[ $m == fp32 ]] && tol=$FP32_JSON_TOL
        gated=()
        info=()
        for f in "$WORK"/in/*; do
            name=$(basename "$f")
            if [[ " ${DECODER_DIFF[*]} " == *" $name "* ]]; then
                info+=("$WORK/out/$m/$name.jsonl:$ROOT$CHK/out/$m/$name.jsonl")
            else
                gated+=("$WORK/out/$m/$name.jsonl:$ROOT$CHK/out/$m/$name.jsonl")
            fi
        done
        rc=0
        out=$("$X86_PY" "$REPO/$HELPER" compare-json "${gated[@]}" --tol "$tol" --label "$m ${CPUS[0]}") || rc=$?
        log "$out"
        RESULTS+=("$(tail -n 1 <<<"$out" | sed 's/^ *//')")
        ((rc == 0)) || problem "emo-edge infer JSON differs between x86_64 and aarch64 ($m model) on inputs both sides decode identically"
        ((${#info[@]})) || continue
        rc=0
        out=$("$X86_PY" "$REPO/$HELPER" compare-json "${info[@]}" --tol "$tol" --label "$m ${CPUS[0]} ${DECODER_DIFF[*]}, decoded pixels differ") || rc=$?
        log "$out"
        RESULTS+=("$(tail -n 1 <<<"$out" | sed 's/^ *//')")
        if ((rc != 0)); then
            if [[ $STRICT_VIDEO == 1 ]]; then
                problem "emo-edge infer JSON differs on ${DECODER_DIFF[*]} ($m model): OpenCV/FFmpeg decodes it to different pixels on aarch64"
            else
                warning "emo-edge infer JSON differs on ${DECODER_DIFF[*]} ($m model) because OpenCV/FFmpeg decodes the MJPEG frames to different pixels on aarch64 (the lossless copy of the same frames matches)"
            fi
        fi
    done
}

compare_raw() {
    local m model_arg_x86 model_arg_arm cpu tol
    for m in "${MODELS[@]}"; do
        model_arg_x86=()
        model_arg_arm=()
        tol=$INT8_TOL
        if [[ $m == fp32 ]]; then
            model_arg_x86=(--model "$WORK/fp32.onnx")
            model_arg_arm=(--model "$CHK/models/fp32.onnx")
            tol=$FP32_TOL
        fi
        # fixed inputs made once on x86, classified on both sides
        "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" raw-inputs "$WORK/in" "$SHARED/fer2013/val" "$WORK/raw-in-$m.npz" \
            --per-class "$FER_PER_CLASS" "${model_arg_x86[@]}" | sed 's/^/  x86: /'
        cp "$WORK/raw-in-$m.npz" "$ROOT$CHK/raw-in-$m.npz"
        "${NICE[@]}" "$X86_PY" "$REPO/$HELPER" raw-dump "$WORK/raw-in-$m.npz" "$WORK/in" "$WORK/raw-x86-$m.npz" \
            "${model_arg_x86[@]}" | sed 's/^/  x86: /'
        for cpu in "${CPUS[@]}"; do
            in_root "$cpu" "$VENV/bin/python" "$SRC/$HELPER" raw-dump "$CHK/raw-in-$m.npz" "$CHK/in" \
                "$CHK/raw-arm-$m-$cpu.npz" "${model_arg_arm[@]}" | sed "s/^/  aarch64 $cpu: /"
            local out rc=0
            out=$("$X86_PY" "$REPO/$HELPER" compare-raw "$WORK/raw-x86-$m.npz" "$ROOT$CHK/raw-arm-$m-$cpu.npz" \
                --tol "$tol" --label "$m $cpu") || rc=$?
            log "$out"
            while IFS= read -r line; do RESULTS+=("${line#  }"); done <<<"$(grep -v 'Classifier.predict:' <<<"$out")"
            ((rc == 0)) || problem "Classifier.predict probabilities differ beyond $tol between x86_64 and aarch64 $cpu ($m model)"
        done
    done
}

# ----------------------------------------------------------------------------- main
main() {
    log "emo arm64 check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -m)), repo at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
    step "host checks" check_host
    step "mount binfmt_misc" mount_binfmt
    step "host tools (qemu-user-static, debootstrap)" install_host_tools
    step "qemu-aarch64 binfmt handler" setup_binfmt
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    flock -n 9 || setup_fail "another arm64 check is using $ROOT (lock $ROOT.lock)"
    step "Debian $SUITE arm64 root (build or reuse)" build_root
    step "mount /proc, /dev into the root" mount_root
    step "install the project on aarch64 (pip install ., venvs)" install_project
    step "versions" show_versions
    step "inputs and test data" prepare_inputs
    step "video decoding on both sides" check_videos
    step "torch-free tests on aarch64" run_tests
    step "emo-edge infer --format json on x86_64 and aarch64" infer_both_sides
    step "compare emo-edge JSON" compare_json
    step "compare raw probabilities (Classifier.predict)" compare_raw
    check_tree_unchanged
    umount_root

    log ""
    log "Results:"
    local r
    for r in "${RESULTS[@]}"; do log "  $r"; done
    print_times
    log ""
    for r in "${WARNINGS[@]}"; do log "  WARNING: $r"; done
    if ((${#PROBLEMS[@]})); then
        for r in "${PROBLEMS[@]}"; do log "  - $r"; done
        log "FAIL: ${#PROBLEMS[@]} problem(s) on aarch64 (qemu ${CPUS[*]})"
        VERDICT=1
        exit 1
    fi
    log "PASS: the emo edge runtime on aarch64 (qemu ${CPUS[*]}) gives the x86_64 answers${WARNINGS:+ (${#WARNINGS[@]} warning(s) above)}"
    VERDICT=1
    exit 0
}

main "$@"

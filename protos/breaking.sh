#!/usr/bin/env bash
# buf breaking against a git revision (default: main). The third-party protos are not in git,
# so the base's image is built from its protos/ plus today's build/protodeps.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=$(realpath "${BUF:-.cache/bin/buf}")
base=${1:-main}
if ! git cat-file -e "$base:protos" 2>/dev/null; then
  echo "buf breaking: $base has no protos/ yet; nothing to compare"; exit 0
fi
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
git archive "$base" protos buf.yaml | tar -x -C "$scratch"
mkdir -p "$scratch/build" && cp -r build/protodeps "$scratch/build/"
(cd "$scratch" && "$BUF" build -o base.binpb)
# Both sides as one image each, built alike (the workspace has two modules).
"$BUF" build -o "$scratch/current.binpb"
"$BUF" breaking "$scratch/current.binpb" --against "$scratch/base.binpb" --config buf.yaml
echo "buf breaking: no breaking change against $base"

#!/usr/bin/env bash
# The main job: a local fleet of 3 nodes on the embedded broker, driven by mco.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/collective-demo}
MCO=.venv/bin/mco
CFG="$DIR/client.yaml"

run() { echo; echo "\$ mco $*"; "$MCO" "$@" || echo "(exit status $?)"; }

if [ -f "$DIR/fleet.json" ]; then "$MCO" fleet down --dir "$DIR" >/dev/null || true; fi
trap '"$MCO" fleet down --dir "$DIR"' EXIT

echo "\$ mco fleet up --nodes 3 --dir $DIR"
"$MCO" fleet up --nodes 3 --dir "$DIR"
run ping -c "$CFG"
run find -c "$CFG" -F role=web
run find -c "$CFG" -F os.family=debian -C /^role::/
run rpc -c "$CFG" rpcutil get_fact fact=location
run rpc -c "$CFG" rpcutil ping -I node-002 -I node-003
run facts -c "$CFG" role
run inventory -c "$CFG" node-001
echo
echo "\$ mco fleet down --dir $DIR"

#!/usr/bin/env bash
# The main job: a local fleet of 3 nodes on the embedded broker, driven by mco.
# The agents' part shows each agent whose tool this machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/collective-demo}
MCO=.venv/bin/mco
CFG="$DIR/client.yaml"
NAGIOS=/usr/lib/nagios/plugins

run() { echo; echo "\$ mco $*"; "$MCO" "$@" || echo "(exit status $?)"; }

if [ -f "$DIR/fleet.json" ]; then "$MCO" fleet down --dir "$DIR" >/dev/null || true; fi
trap '"$MCO" fleet down --dir "$DIR"' EXIT

# Agent settings for every node (mco fleet up --server-config): NRPE checks where the
# Nagios plugins are installed, and libvirt's test driver standing in for a Xen host.
mkdir -p "$DIR"
{
    echo "plugins:"
    echo "  xen: {uri: 'test:///default'}"
    if [ -x "$NAGIOS/check_load" ]; then
        mkdir -p "$DIR/nrpe.d"
        cat > "$DIR/nrpe.d/demo.cfg" <<EOF
command[check_load]=$NAGIOS/check_load -w 15,10,5 -c 30,25,20
command[check_disk]=$NAGIOS/check_disk -w 20% -c 10% -p /
command[check_procs]=$NAGIOS/check_procs -w 250 -c 400
EOF
        echo "  nrpe: {conf_file: [], conf_dir: '$DIR/nrpe.d'}"
    fi
} > "$DIR/agents.yaml"

echo "\$ mco fleet up --nodes 3 --dir $DIR --server-config $DIR/agents.yaml"
"$MCO" fleet up --nodes 3 --dir "$DIR" --server-config "$DIR/agents.yaml"
run ping -c "$CFG"
run find -c "$CFG" -F role=web
run find -c "$CFG" -F os.family=debian -C /^role::/
run rpc -c "$CFG" rpcutil get_fact fact=location
run rpc -c "$CFG" rpcutil ping -I node-002 -I node-003
run facts -c "$CFG" role
run inventory -c "$CFG" node-001

echo
echo "# the agents"
run pgrep collective.server -I node-001 -c "$CFG"
if command -v dpkg-query >/dev/null; then run package dpkg status -c "$CFG"; fi
if [ -x "$NAGIOS/check_load" ]; then run nrpe check_load -v -c "$CFG"; fi
if command -v puppet >/dev/null; then run puppet status -c "$CFG"; fi
if .venv/bin/python -c "import libvirt" 2>/dev/null; then run xen list -c "$CFG"; fi
echo
echo "\$ mco fleet down --dir $DIR"

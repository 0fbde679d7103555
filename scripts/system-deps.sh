#!/usr/bin/env bash
# Debian packages the real-component tests need (make system-deps / make test).
#
#   rabbitmq-server           RabbitMQ + rabbitmq_stomp for the connector tests. The tests
#                             start a *private* node (collective.testing.rabbitmq); the
#                             system service is never started or used.
#   faketime                  clock-skew tests (docs/security.md S3/R8)
#   dpkg-dev                  package-agent tests (dpkg-scanpackages for a local repo)
#   dnf rpm createrepo-c      package-agent dnf tests (rpmbuild, a createrepo_c repo and
#                             dnf working in a private --installroot)
#   puppet                    puppet agent tests (the real puppet 7 agent)
#   puppetserver              puppet agent tests: they start a *private* puppetserver
#                             (collective_agent_puppet.testing) on 127.0.0.1 with its own
#                             CA and directories; the system service is never started or used.
#   monitoring-plugins-basic  nrpe agent tests (check_* plugins)
#   activemq                  ActiveMQ Classic (5.17 on Debian 12) for the connector tests of
#                             the `activemq` flavour. Like RabbitMQ, the tests start a
#                             *private* broker (collective.testing.activemq); the system
#                             service is never started or used.
#   libvirt-dev pkg-config    xen agent tests: `pip install libvirt-python` (the Makefile's
#                             test-deps target) builds against them; the tests use libvirt's
#                             built-in test:/// driver in-process (no libvirtd, no Xen)
#
# Idempotent and quiet when everything is installed. Installs non-interactively, runs
# `apt-get update` once before installing, uses sudo when not root, and never starts a
# service (a temporary policy-rc.d denies it while packages are configured).
set -euo pipefail

PACKAGES=(rabbitmq-server faketime dpkg-dev puppet puppetserver monitoring-plugins-basic
          activemq dnf rpm createrepo-c libvirt-dev pkg-config)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get not found; install these yourself: ${missing[*]}" >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "system-deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "system-deps: installing ${missing[*]}"

# Never start services while installing (rabbitmq-server, puppet, activemq ship units).
# invoke-rc.d and deb-systemd-invoke both honour /usr/sbin/policy-rc.d (exit 101 = deny).
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\n# temporary, from collective scripts/system-deps.sh\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    created_policy=1
fi
cleanup() {
    if [[ $created_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null

still=()
for pkg in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || still+=("$pkg")
done
if [[ ${#still[@]} -ne 0 ]]; then
    echo "system-deps: failed to install: ${still[*]}" >&2
    exit 1
fi
echo "system-deps: done"

#!/usr/bin/env bash
# Creates the SSH key the VMs trust and an answer file for them (run once, before `vagrant up`).
set -euo pipefail
cd "$(dirname "$0")"
nodes=${NODES:-3}
net=${NET:-192.168.56}
[ -f id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C installer-vagrant -f id_ed25519
{
  echo "apiVersion: installer.dev/v1"
  echo "kind: Cluster"
  echo "metadata:"
  echo "  name: vagrant"
  echo "spec:"
  echo "  ssh:"
  echo "    user: root"
  echo "    auth: {type: key, keyFile: ./id_ed25519}"
  echo "    sudo: {mode: none}"
  echo "    knownHostsFile: ./known_hosts"
  echo "  hosts:"
  for i in $(seq 1 "$nodes"); do
    echo "    - address: $net.$((10 + i))"
  done
} > answers.yaml
echo "wrote id_ed25519 and answers.yaml for $nodes nodes; now: vagrant up"

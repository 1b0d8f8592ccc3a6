#!/bin/sh
# Runs once per recipe inside the freshly debootstrapped base root filesystem (chroot), as root.
# The lab tool passes the user names and the password through the environment (single source: the
# constants in installer-tests/src/lab/mod.rs, which are part of the recipe hash).
# Per-node files (hostname, machine-id, network address, SSH host key, authorized_keys) are NOT made here:
# `up` writes them into each node's overlay upper directory.
set -eu

: "${LAB_NOPASSWD_USER:?}" "${LAB_PASSWORD_USER:?}" "${LAB_PASSWORD:?}"

# --- users ---------------------------------------------------------------------------------------------
# root logs in with the lab key; LAB_NOPASSWD_USER has passwordless sudo; LAB_PASSWORD_USER needs its
# password for sudo and may also log in over SSH with that password.
useradd --create-home --uid 1001 --shell /bin/bash "$LAB_NOPASSWD_USER"
useradd --create-home --uid 1002 --shell /bin/bash "$LAB_PASSWORD_USER"
echo "$LAB_PASSWORD_USER:$LAB_PASSWORD" | chpasswd
passwd --lock root >/dev/null
cat > /etc/sudoers.d/lab <<SUDOERS
$LAB_NOPASSWD_USER ALL=(ALL:ALL) NOPASSWD: ALL
$LAB_PASSWORD_USER ALL=(ALL:ALL) ALL
SUDOERS
chmod 0440 /etc/sudoers.d/lab
for u in root "$LAB_NOPASSWD_USER" "$LAB_PASSWORD_USER"; do
    home=$(getent passwd "$u" | cut -d: -f6)
    install -d -m 0700 -o "$u" -g "$u" "$home/.ssh"
done

# --- OpenSSH server ------------------------------------------------------------------------------------
# The image's host keys are removed: each node gets a fresh ed25519 key per `up`.
rm -f /etc/ssh/ssh_host_*
cat > /etc/ssh/sshd_config.d/10-lab.conf <<SSHD
# Written by the installer lab recipe (installer-tests/data/lab/customize.sh).
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 50:30:100
Match User $LAB_PASSWORD_USER
    PasswordAuthentication yes
SSHD

# --- systemd -------------------------------------------------------------------------------------------
# nspawn mounts the cgroup controllers read-only; container runtimes inside a node need them writable
# (../shared/docs/lab.md). Ordered before sysinit.target so everything later sees them writable.
cat > /etc/systemd/system/lab-cgroup-rw.service <<'UNIT'
[Unit]
Description=Lab: make the cgroup controllers writable (systemd-nspawn mounts them read-only)
DefaultDependencies=no
Before=sysinit.target
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup /sys/fs/cgroup/*; do if mountpoint -q "$d"; then mount -o remount,bind,rw "$d" || true; fi; done'

[Install]
WantedBy=sysinit.target
UNIT

# chrony: nodes run without CAP_SYS_TIME (they share the host's clock and must never set it), so
# Debian's unit condition ConditionCapability=CAP_SYS_TIME would skip it; run it with -x instead
# (track time, never touch the clock) so time-sync detection finds a real, active daemon.
mkdir -p /etc/systemd/system/chrony.service.d
cat > /etc/systemd/system/chrony.service.d/10-lab.conf <<'UNIT'
[Unit]
ConditionCapability=

[Service]
Environment=DAEMON_OPTS="-F 1 -x"
UNIT
sed -i 's/^DAEMON_OPTS=.*/DAEMON_OPTS="-F 1 -x"/' /etc/default/chrony

systemctl --root=/ enable systemd-networkd.service ssh.service chrony.service lab-cgroup-rw.service >/dev/null 2>&1
# Timers that would wake up on every node for nothing, and units that cannot work in a container.
systemctl --root=/ mask apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer >/dev/null 2>&1
# Debian's etcd.service would hold 2379 on every node; the k3s stand-in starts its own member.
systemctl --root=/ disable etcd.service >/dev/null 2>&1 || true
systemctl --root=/ mask etcd.service >/dev/null 2>&1
rm -rf /var/lib/etcd/default

# An empty machine-id here; `up` writes a fresh one per node (systemd would treat an empty one as first boot).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

# --- size ----------------------------------------------------------------------------------------------
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /var/cache/debconf/*-old

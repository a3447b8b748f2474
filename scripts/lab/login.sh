#!/bin/bash
# The lab's login node, for trying hpcft from a workstation (hpcft --cluster): a network namespace
# `lab-login` (10.200.0.2) with an sshd and the SLURM clients but no slurmd, reachable from this machine
# only over ssh, as the unprivileged user `hpcft` (not root: permissions are real). Like on a real
# cluster, the nodes know that user (one /etc/passwd here) and its home is on the shared filesystem.
#   login.sh up | down | venv   (after up.sh and sshd.sh; `scripts/dev-cluster up` runs it)
# The host's key for it: $LAB/login/id_ed25519; `hpcft clusters add` registers it (dev-cluster does).
set -euo pipefail
LAB=${SLURMLAB_DIR:-/tmp/hpcft-lab}
L=$LAB/login
ADDR=10.200.0.2
USER_NAME=${SLURMLAB_LOGIN_USER:-hpcft}

down() {
  if [ -s "$L/sshd.pid" ]; then
    pid=$(cat "$L/sshd.pid")
    if grep -q sshd "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid" || true
      for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done  # gone before its namespace goes
    fi
    rm -f "$L/sshd.pid"
  fi
  # The host end of the veth first: deleting it takes its peer along even while something still holds the
  # namespace (a namespace outlives `ip netns del` as long as a process is in it).
  ip link del slvlogin 2>/dev/null || true
  ip netns del sllogin 2>/dev/null || true
  sed -i '/^# BEGIN slurmlab-login$/,/^# END slurmlab-login$/d' /etc/hosts
}

# The user's own Python environment, as a cluster user has one: a venv of the system python that uses the packages
# of the checkout this script belongs to (.venv's interpreter lives under /root, which the user cannot enter).
# `dev-cluster up` runs it again when the lab is already up: the login node then runs this checkout's hpcft.
venv() {
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  local packages=$repo/.venv/lib/python3.11/site-packages d
  [ -d "$packages" ] || return 0
  # Every folder above them must let the user pass (a checkout under /root does not): an ACL entry for this
  # user alone, traverse only, where it cannot.
  d=$packages
  while [ "$d" != / ]; do
    if ! runuser -u "$USER_NAME" -- test -x "$d"; then
      command -v setfacl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq acl >/dev/null; }
      setfacl -m "u:$USER_NAME:x" "$d"
    fi
    d=$(dirname "$d")
  done
  /usr/bin/python3 -c 'import venv' 2>/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
  runuser -u "$USER_NAME" -- /usr/bin/python3 -m venv --without-pip --clear "/home/$USER_NAME/venv"
  echo "import site; site.addsitedir('$packages')" \
    > "/home/$USER_NAME/venv/lib/python3.11/site-packages/hpcft-checkout.pth"
  printf '#!/home/%s/venv/bin/python\nimport sys\nfrom hpcft.cli import main\nsys.exit(main())\n' "$USER_NAME" \
    > "/home/$USER_NAME/venv/bin/hpcft"
  chmod 0755 "/home/$USER_NAME/venv/bin/hpcft"; chown -R "$USER_NAME:" "/home/$USER_NAME/venv"
}

up() {
  down
  id "$USER_NAME" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$USER_NAME"
  usermod -p '*' "$USER_NAME"  # no password, but not locked: sshd (UsePAM no) refuses a locked account
  # A login node's user reads slurm.conf and its jobs run their batch script from slurmd's spool: the lab's
  # directories become traversable (0711: no listing), the cluster configs readable; keys, pids, the
  # accounting password (slurmdbd.conf, 0600) stay root's.
  chmod 0711 "$LAB" "$LAB/var" "$LAB/var/spool" "$LAB"/var/spool/node* "$LAB/etc"
  find "$LAB/etc" -type d -exec chmod 0755 {} +
  find "$LAB/etc" -name '*.conf' ! -name slurmdbd.conf -exec chmod 0644 {} +

  venv

  install -d -m 0711 "$L"  # sshd reads authorized_keys as the user; the private key stays 0600
  [ -s "$L/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "hpcft-lab-workstation" -f "$L/id_ed25519"
  [ -s "$L/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$L/hostkey"
  cp "$L/id_ed25519.pub" "$L/authorized_keys"; chmod 0644 "$L/authorized_keys"
  echo "lab-login,$ADDR $(cut -d' ' -f1,2 "$L/hostkey.pub")" > "$L/known_hosts"
  cat > "$L/sshd_config" <<CFG
Port 22
ListenAddress $ADDR
HostKey $L/hostkey
PidFile $L/sshd.pid
AllowUsers $USER_NAME
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile $L/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
CFG

  ip netns add sllogin
  ip link add slvlogin type veth peer name eth0 netns sllogin
  ip link set slvlogin master slbr0 up
  ip -n sllogin addr add "$ADDR/24" dev eth0
  ip -n sllogin link set lo up
  ip -n sllogin link set eth0 up
  { echo "# BEGIN slurmlab-login"; echo "$ADDR lab-login"; echo "# END slurmlab-login"; } >> /etc/hosts
  install -d -m 0755 /run/sshd
  nsenter --net=/run/netns/sllogin unshare --uts sh -c "hostname lab-login && exec /usr/sbin/sshd -f '$L/sshd_config' -E '$L/sshd.log'"
  local ssh=(ssh -i "$L/id_ed25519" -o IdentitiesOnly=yes -o UserKnownHostsFile="$L/known_hosts"
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=5 "$USER_NAME@lab-login")
  for _ in $(seq 50); do "${ssh[@]}" true 2>/dev/null && break; sleep 0.1; done
  "${ssh[@]}" sinfo -h -o %P >/dev/null || { echo "login.sh: $USER_NAME@lab-login cannot reach SLURM" >&2; exit 1; }
  echo "[slurmlab] login node up: $USER_NAME@lab-login ($ADDR), key $L/id_ed25519"
}

"${1:-up}"

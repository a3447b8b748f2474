#!/bin/bash
# sshd inside each lab node (its network + UTS namespace), with keys kept under $LAB/ssh, so that
# pdsh, Open MPI over ssh and DeepSpeed's pdsh runner can reach node1..nodeN as on a real cluster.
# Nothing goes into ~/.ssh: clients use $LAB/ssh/bin/ssh (a shim adding -F $LAB/ssh/ssh_config);
# put that directory first in PATH (hpcft's tests do it through launch.setup).
#   sshd.sh up | down            (after up.sh; recipe from shared/slurm-lab/SSH-MPI.md)
set -euo pipefail
LAB=${SLURMLAB_DIR:-/tmp/hpcft-lab}
# Every node of every cluster of the lab: as up.sh recorded them, unless given (a test restoring a node).
started=$(head -1 "$LAB/var/started" 2>/dev/null || true)
nodes=$(echo "$started" | sed -n 's/.*nodes=\([0-9]*\).*/\1/p'); clusters=$(echo "$started" | sed -n 's/.*clusters=\([0-9]*\).*/\1/p')
N=$(( ${SLURMLAB_NODES:-${nodes:-2}} * ${SLURMLAB_CLUSTERS:-${clusters:-1}} ))
NET=10.200.0
S=$LAB/ssh

down() {
  for f in "$S"/sshd-node*.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f"); grep -q sshd "/proc/$pid/comm" 2>/dev/null && kill "$pid" || true
    rm -f "$f"
  done
}

up() {
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || {
    apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null; }
  down
  mkdir -p "$S/bin"; install -d -m 0755 /run/sshd
  [ -s "$S/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$S/id_ed25519"
  cp "$S/id_ed25519.pub" "$S/authorized_keys"; chmod 600 "$S/authorized_keys"
  : > "$S/known_hosts"
  for i in $(seq 1 "$N"); do
    [ -s "$S/hostkey_node$i" ] || ssh-keygen -q -t ed25519 -N '' -f "$S/hostkey_node$i"
    echo "node$i,$NET.$((10 + i)) $(cut -d' ' -f1,2 "$S/hostkey_node$i.pub")" >> "$S/known_hosts"
    cat > "$S/sshd_config.node$i" <<CFG
Port 22
ListenAddress $NET.$((10 + i))
HostKey $S/hostkey_node$i
PidFile $S/sshd-node$i.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $S/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
# What a site sets for jobs that pass secrets by name (hpcft's deepspeed-pdsh: ssh -o SendEnv=NAME).
AcceptEnv LANG LC_* HF_TOKEN WANDB_API_KEY HPCFT_TEST_*
CFG
  done
  cat > "$S/ssh_config" <<CFG
Host node* $NET.*
  User root
  IdentityFile $S/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
  LogLevel ERROR
CFG
  printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$S/ssh_config" > "$S/bin/ssh"; chmod +x "$S/bin/ssh"
  for i in $(seq 1 "$N"); do
    sp=$(cat "$LAB/var/slurmd-node$i.pid")
    nsenter --net="/run/netns/slns$i" --uts="/proc/$sp/ns/uts" /usr/sbin/sshd -f "$S/sshd_config.node$i" -E "$S/sshd-node$i.log"
  done
  for i in $(seq 1 "$N"); do
    for _ in $(seq 50); do "$S/bin/ssh" "node$i" true 2>/dev/null && break; sleep 0.1; done
    "$S/bin/ssh" "node$i" true || { echo "sshd.sh: ssh node$i failed" >&2; exit 1; }
  done
  echo "[slurmlab] sshd up on node1..node$N (client: PATH=$S/bin:\$PATH)"
}

"${1:-up}"

#!/usr/bin/env bash
# The container test (docs/deployment.md): build the server image with podman on a local Debian base, run it with a
# checkpoint volume and an auth file, wait for the image's own HEALTHCHECK to say SERVING, drive it with the real
# client (tests/container/drive.py: remote spikes equal a local model), stop it (SIGTERM: every session
# checkpointed), start a new container on the same volume and check that the session continues exactly.
#
# Skipped (exit 0, with a message) only where podman, runc and debootstrap can't be had. The Debian and python base
# images stay in podman's storage and its layer cache keeps torch's layer, so runs after the first are quick.
# Knobs: KEEP_IMAGES=0 removes the test image afterwards; TIMEOUT_HEALTHY (s, default 180).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
started=$SECONDS
say() { printf '\n== container test: %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { printf '\nFAILED container test: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
export PATH="$PATH:/usr/sbin:/sbin"

if ! have podman || ! have runc || ! have debootstrap; then
  bash scripts/system_packages.sh || true
fi
for tool in podman runc debootstrap; do
  if ! have "$tool"; then
    echo "container test SKIPPED: $tool is not installed and cannot be installed here (scripts/system_packages.sh)"
    exit 0
  fi
done

source scripts/venv.sh # the client side runs in the project's .venv
DEBIAN_IMAGE=localhost/debian:bookworm
PYTHON_IMAGE=localhost/python:3.11
IMAGE=localhost/rnnbuilder-sim:test
TAG="rnnsim-ctest-$$"
WORK="$(mktemp -d /tmp/rnnsim-container.XXXXXX)"

# The default crun runtime fails here on cgroups and rlimits: runc, cgroupfs and no default ulimits.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
# podman runs HEALTHCHECKs from systemd timers, and says so on every start and stop where there is no systemd: the
# script runs the image's HEALTHCHECK itself (podman healthcheck run), and those messages are filtered out.
podman() { command podman --runtime "$(command -v runc)" "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

cleanup() {
  local status=$?
  for ctr in "$TAG-1" "$TAG-2"; do podman rm -f -t 0 "$ctr" >/dev/null 2>&1 || true; done
  podman volume rm -f "$TAG" >/dev/null 2>&1 || true
  [ "${KEEP_IMAGES:-1}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  [ $status -eq 0 ] || echo "container test: cleaned up after a failure (status $status)" >&2
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# 1. The bases: Debian bookworm from debootstrap (once), python3 on top (tests/container/python.Containerfile).
if ! podman image exists "$DEBIAN_IMAGE"; then
  say "debootstrap bookworm for $DEBIAN_IMAGE (once; cached in podman's storage)"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  tar -C "$WORK/rootfs" -c . | podman import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi
say "base image $PYTHON_IMAGE"
podman build -q --isolation=chroot --network=host --build-arg "DEBIAN=$DEBIAN_IMAGE" \
  -f tests/container/python.Containerfile -t "$PYTHON_IMAGE" tests/container >/dev/null

# 2. The image, as the local recipe in docs/deployment.md builds it: pip's wheel folder and CA bundle pass through as
#    build args, and torch is pinned to the client venv's version (the local CPU wheel, and bit-equal results).
torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
find_links="${PIP_FIND_LINKS:-$("$PY" -m pip config get global.find-links 2>/dev/null || true)}"
cert="${PIP_CERT:-$("$PY" -m pip config get global.cert 2>/dev/null || true)}"
[ -n "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
build=(--isolation=chroot --network=host --format docker --build-arg "BASE=$PYTHON_IMAGE"
  --build-arg "TORCH_SPEC=torch==$torch_version")
if [ -d "${find_links%% *}" ]; then
  build+=(--volume "${find_links%% *}:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
fi
if [ -f "$cert" ]; then
  build+=(--volume "$cert:/host-ca.crt:ro" --build-arg PIP_CERT=/host-ca.crt)
fi
say "podman build $IMAGE (torch==$torch_version)"
podman build "${build[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "podman build"; }
grep -E "^torch " "$WORK/build.log" || true

# The image's own settings: non-root, ports, healthcheck, exec-form entrypoint.
inspect() { podman image inspect --format "$1" "$IMAGE"; }
user="$(inspect '{{.Config.User}}')"
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "the image runs as '$user', not a non-root user"
inspect '{{json .Config.ExposedPorts}}' | grep -q '50051/tcp' || fail "50051 is not exposed"
inspect '{{json .Config.ExposedPorts}}' | grep -q '9464/tcp' || fail "9464 is not exposed"
inspect '{{json .Config.Healthcheck}}' | grep -q 'client health' || fail "no HEALTHCHECK with the client's probe"
echo "image: user $user, ports $(inspect '{{json .Config.ExposedPorts}}'), entrypoint $(inspect '{{json .Config.Entrypoint}}')"

# 3. Run it: an auth file, a checkpoint volume, free ports on the host network.
read -r port metrics_port < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
address="127.0.0.1:$port"
token="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
mkdir -p "$WORK/config"
printf '[tenants.alice]\ntoken = "%s"\n' "$token" >"$WORK/config/auth.toml"
chmod 755 "$WORK/config" && chmod 644 "$WORK/config/auth.toml"
podman volume create "$TAG" >/dev/null

start() { # NAME: a server container on the shared volume; waits until its HEALTHCHECK reports SERVING
  local name=$1 deadline=$((SECONDS + ${TIMEOUT_HEALTHY:-180}))
  podman run -d --name "$name" --network=host \
    -v "$TAG:/data/checkpoints" -v "$WORK/config:/config:ro" \
    -e "RNNSIM_ADDRESS=$address" -e "RNNSIM_METRICS_PORT=$metrics_port" -e RNNSIM_DEVICE=cpu \
    -e RNNSIM_TORCH_THREADS=1 -e RNNSIM_WORKERS=2 -e "RNNSIM_SERVER_ID=$name" \
    "$IMAGE" >/dev/null
  # podman would run the image's HEALTHCHECK from a systemd timer; without systemd, it runs here on demand.
  until podman healthcheck run "$name" >/dev/null 2>&1; do
    if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
      podman logs "$name" 2>&1 | tail -30
      fail "container $name exited before it was healthy"
    fi
    [ $SECONDS -lt $deadline ] || { podman logs "$name" 2>&1 | tail -30; fail "$name not healthy in time"; }
    sleep 2
  done
  local probe
  probe="$(podman inspect --format '{{range .State.Health.Log}}{{.Output}}{{"\n"}}{{end}}' "$name")"
  probe="$(tail -1 <<<"$probe")"
  echo "$name: health $(podman inspect --format '{{.State.Health.Status}}' "$name"), the image's probe said: $probe"
  [ "$probe" = SERVING ] || fail "the HEALTHCHECK probe of $name did not report SERVING"
}

stop() { # NAME: SIGTERM, a graceful shutdown that checkpoints, exit status 0
  local name=$1 t0=$SECONDS
  podman stop -t 60 "$name" >/dev/null
  local code logs
  code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
  logs="$(podman logs "$name" 2>&1)"
  sed 's/^/  | /' <<<"$logs"
  [ "$code" = 0 ] || fail "$name exited with status $code after SIGTERM, not 0"
  grep -q "checkpointed 1 sessions" <<<"$logs" || fail "$name did not log its shutdown checkpoint"
  echo "$name: stopped gracefully in $((SECONDS - t0)) s, exit 0, session checkpointed"
}

say "start $TAG-1 on $address (metrics $metrics_port), volume $TAG"
start "$TAG-1"
say "client: create a session, stream, compare with the local model"
"$PY" tests/container/drive.py first "$address" "$token" "$WORK/state.json" "$metrics_port"
say "podman stop $TAG-1 (SIGTERM)"
stop "$TAG-1"
podman run --rm --network=none -v "$TAG:/data/checkpoints:ro" --entrypoint ls "$IMAGE" -ln /data/checkpoints |
  sed 's/^/  volume: /'

say "start $TAG-2 on the same volume"
start "$TAG-2"
say "client: the session continues exactly"
"$PY" tests/container/drive.py second "$address" "$token" "$WORK/state.json"
stop "$TAG-2"
say "passed"
echo "container: 1 passed, 0 failed"

#!/usr/bin/env bash
# docker_check.sh - prove the Dockerfile builds and runs, without a Docker daemon or Docker Hub.
#
#   1. base image: if no debian:12-slim is in podman's storage, mmdebstrap a Debian 12 minbase
#      rootfs from the Debian mirror and `podman import` it as localhost/debian:12-slim (the
#      Dockerfile's FROM then resolves locally; the build never pulls: --pull=never);
#   2. podman build of the Dockerfile (layer cache kept, so a re-run is fast);
#   3. podman run on the host network with the local (bubblewrap) sandbox; checks /healthz, the
#      generated admin token, create a session, a run:false message read back from /events, a
#      run:true prompt of the `shell` agent inside the bubblewrap sandbox, the HEALTHCHECK, a
#      graceful stop (SIGTERM, exit 0) and a restart on the same /data volume.
# Prints `ok - …` / `not ok - …` lines and exits non-zero if any failed. Skips (exit 0) with a
# message when podman or mmdebstrap is missing, or when not root. Not part of `make test`:
# `make docker-check`. Cleans up its container and volume at exit; keeps the images.
#
# Environment: DOCKER_CHECK_IMAGE (localhost/sessiond:check), DOCKER_CHECK_DIR
# (/var/tmp/sessiond-docker-check: rootfs tar and logs), DOCKER_CHECK_PORT (first free from
# 18380), DOCKER_CHECK_RUNTIME (podman's default, else runc when the default cannot start a
# container: crun refuses cgroup v1+v2 "hybrid" hosts), DOCKER_CHECK_SANDBOX (local|process),
# DEBIAN_MIRROR (http://deb.debian.org/debian), DEBIAN_SECURITY (…/debian-security).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

IMAGE=${DOCKER_CHECK_IMAGE:-localhost/sessiond:check}
BASE=localhost/debian:12-slim
WORK=${DOCKER_CHECK_DIR:-/var/tmp/sessiond-docker-check}
SANDBOX=${DOCKER_CHECK_SANDBOX:-local}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
NAME=sessiond-check-$$
FAILED=0

skip() {
  echo "docker-check: SKIP: $*"
  exit 0
}
ok() { echo "ok - $*"; }
notok() {
  echo "not ok - $*"
  FAILED=$((FAILED + 1))
}
now() { date +%s.%N; }
# podman without systemd logs "unable to get systemd connection to … healthchecks" on every
# run/stop/start of an image with a HEALTHCHECK: harmless (no timer), filtered out.
pm() { podman "$@" 2> >(grep -v 'systemd connection' >&2); }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

command -v podman >/dev/null 2>&1 ||
  skip "podman is not installed (Debian 12: apt-get install -y podman mmdebstrap runc)"
[ "$(id -u)" = 0 ] || skip "run as root (rootful podman; rootless is untested)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"
mkdir -p "$WORK"

# Explicit rlimits: podman's defaults (nofile 1048576, nproc above 32768) cannot be set where
# the caller lacks CAP_SYS_RESOURCE (crun/runc: "setrlimit …: Operation not permitted").
hn=$(ulimit -Hn)
[ "$hn" = unlimited ] || [ "$hn" -gt 1048576 ] && hn=1048576
hu=$(ulimit -Hu)
[ "$hu" = unlimited ] || [ "$hu" -gt 32768 ] && hu=32768
ULIMITS=(--ulimit "nofile=$hn:$hn" --ulimit "nproc=$hu:$hu")

# ---- 1. the base image ----
if podman image exists docker.io/library/debian:12-slim; then
  BASE=docker.io/library/debian:12-slim
fi
if podman image exists "$BASE"; then
  ok "base image $BASE present (reused)"
else
  command -v mmdebstrap >/dev/null 2>&1 ||
    skip "no debian:12-slim image and mmdebstrap is not installed (apt-get install -y mmdebstrap)"
  t=$(now)
  # minbase + the path excludes of the official -slim images (no man pages, docs, locales)
  if nice mmdebstrap --variant=minbase --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$WORK/rootfs.tar" \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main" >"$WORK/mmdebstrap.log" 2>&1 &&
    podman import --change 'CMD ["/bin/bash"]' "$WORK/rootfs.tar" "$BASE" \
      >>"$WORK/mmdebstrap.log" 2>&1; then
    ok "base image $BASE made by mmdebstrap + podman import ($(since "$t"))"
    rm -f "$WORK/rootfs.tar"
  else
    tail -20 "$WORK/mmdebstrap.log"
    notok "base image (log: $WORK/mmdebstrap.log)"
    exit 1
  fi
fi

# ---- the OCI runtime ----
RUNTIME=()
if [ -n "${DOCKER_CHECK_RUNTIME:-}" ]; then
  RUNTIME=(--runtime "$DOCKER_CHECK_RUNTIME")
elif ! err=$(podman run --rm --pull=never "${ULIMITS[@]}" "$BASE" true 2>&1); then
  echo "# default OCI runtime cannot start a container: $err"
  if command -v runc >/dev/null 2>&1 &&
    podman run --rm --pull=never --runtime runc "${ULIMITS[@]}" "$BASE" true >/dev/null 2>&1; then
    RUNTIME=(--runtime runc)
    echo "# using --runtime runc"
  else
    notok "podman cannot run a container here (apt-get install -y runc may help): $err"
    exit 1
  fi
fi

# ---- 2. build ----
t=$(now)
# --format docker keeps the HEALTHCHECK (the OCI image format has none)
if nice podman build --pull=never --network=host --format docker "${RUNTIME[@]}" \
  "${ULIMITS[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
  ok "podman build -t $IMAGE . ($(since "$t"); $(podman image inspect "$IMAGE" \
    --format '{{.Size}}' | awk '{ printf "%d MB", $1 / 1e6 }'))"
else
  tail -30 "$WORK/build.log"
  notok "podman build (log: $WORK/build.log)"
  exit 1
fi

# ---- 3. run ----
PORT=${DOCKER_CHECK_PORT:-}
if [ -z "$PORT" ]; then
  for p in $(seq 18380 18480); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      PORT=$p
      break
    fi
  done
fi
B=http://127.0.0.1:$PORT
SEC=()
if [ "$SANDBOX" = local ]; then
  # bubblewrap needs sethostname (seccomp) and a fresh /proc mount (masked /proc paths)
  SEC=(--security-opt seccomp=unconfined --security-opt systempaths=unconfined)
fi
cleanup() {
  podman logs "$NAME" >"$WORK/container.log" 2>&1
  podman rm -f -v -t 2 "$NAME" >/dev/null 2>&1
}
trap cleanup EXIT

t=$(now)
# The check below runs the image's HEALTHCHECK once by hand (no systemd timer needed).
if ! pm run -d --name "$NAME" --network=host "${RUNTIME[@]}" \
  "${ULIMITS[@]}" "${SEC[@]}" \
  -e "SESSIOND_LISTEN=127.0.0.1:$PORT" -e "SESSIOND_SANDBOX=$SANDBOX" "$IMAGE" >/dev/null; then
  notok "podman run"
  exit 1
fi
up=0
for _ in $(seq 1 100); do
  if curl -fsS "$B/healthz" >/dev/null 2>&1; then
    up=1
    break
  fi
  [ "$(podman inspect "$NAME" --format '{{.State.Running}}')" = true ] || break
  sleep 0.2
done
if [ $up = 1 ]; then
  ok "container up, GET /healthz 200 on $B ($(since "$t"), sandbox $SANDBOX)"
else
  podman logs "$NAME" 2>&1 | tail -5
  notok "container did not answer /healthz on $B"
  exit 1
fi
if [ "$SANDBOX" = local ]; then
  if podman logs "$NAME" 2>&1 | grep -q 'local backend ready'; then
    ok "bubblewrap sandbox self-test passed inside the container"
  else
    notok "bubblewrap sandbox not ready"
  fi
fi

TOKEN=$(podman exec "$NAME" cat /data/admin.token 2>/dev/null)
H=(-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json')
code=$(curl -sS -o /dev/null -w '%{http_code}' "${H[@]}" "$B/v1/me")
if [ -n "$TOKEN" ] && [ "$code" = 200 ]; then
  ok "generated admin token in /data/admin.token works (GET /v1/me 200)"
else
  notok "admin token (GET /v1/me: $code)"
fi
code=$(curl -sS -o /dev/null -w '%{http_code}' "$B/v1/sessions")
if [ "$code" = 401 ]; then ok "no token: 401"; else notok "no token: $code, want 401"; fi

S=$(curl -sS "${H[@]}" -d '{"title":"docker check"}' "$B/v1/sessions")
ID=$(printf '%s' "$S" | sed -n 's/^{"id":"\(s_[^"]*\)".*/\1/p')
if [ -n "$ID" ]; then ok "POST /v1/sessions -> $ID"; else notok "POST /v1/sessions: $S"; fi

M=$(curl -sS "${H[@]}" -d '{"content":"hello from docker-check","run":false}' \
  "$B/v1/sessions/$ID/messages")
case "$M" in
*'"prompt_id":null,"seq":2'*) ok "POST message run:false -> $M" ;;
*) notok "POST message run:false: $M" ;;
esac
E=$(curl -sS "${H[@]}" "$B/v1/sessions/$ID/events?after=0")
case "$E" in
*'"type":"session.created"'*'"type":"message"'*'hello from docker-check'*)
  ok "GET events: session.created + message read back" ;;
*) notok "GET events: $E" ;;
esac

# a real prompt: the default `shell` agent runs it as a script in a sandbox
t=$(now)
curl -sS -o /dev/null "${H[@]}" -d '{"content":"echo hello-from-the-sandbox"}' \
  "$B/v1/sessions/$ID/messages"
done_=""
for _ in $(seq 1 150); do
  E=$(curl -sS "${H[@]}" "$B/v1/sessions/$ID/events?after=2&limit=1000")
  case "$E" in *'"type":"prompt.completed"'* | *'"type":"prompt.failed"'*)
    done_=1
    break
    ;;
  esac
  sleep 0.2
done
case "$E" in
*'hello-from-the-sandbox\n'*'"type":"prompt.completed"'*)
  ok "run:true prompt of the shell agent completed in the $SANDBOX sandbox ($(since "$t"))" ;;
*) notok "run:true prompt (finished: ${done_:-no}): $(printf '%s' "$E" | tail -c 600)" ;;
esac

if hc=$(podman healthcheck run "$NAME" 2>&1); then
  ok "HEALTHCHECK (podman healthcheck run) healthy"
else
  notok "HEALTHCHECK: $hc"
fi

t=$(now)
pm stop -t 15 "$NAME" >/dev/null
rc=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
if [ "$rc" = 0 ] && podman logs "$NAME" 2>&1 | tail -3 | grep -q 'main: stopped'; then
  ok "podman stop: SIGTERM via tini, graceful stop, exit 0 ($(since "$t"))"
else
  notok "podman stop: exit code $rc"
fi

pm start "$NAME" >/dev/null
up=0
for _ in $(seq 1 100); do
  curl -fsS "$B/healthz" >/dev/null 2>&1 && up=1 && break
  sleep 0.2
done
G=$(curl -sS "${H[@]}" "$B/v1/sessions/$ID")
case "$up$G" in
1*'"id":"'"$ID"'"'*) ok "restart on the same /data volume: the session and token are still there" ;;
*) notok "restart: $G" ;;
esac

if [ "$FAILED" = 0 ]; then
  echo "docker-check: all passed (image $IMAGE)"
else
  echo "docker-check: $FAILED failed; logs: $WORK/build.log, $WORK/container.log"
fi
[ "$FAILED" = 0 ]

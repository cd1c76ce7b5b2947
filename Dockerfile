# sessiond: multi-stage build on Debian 12.
#   docker build -t sessiond .
#   docker run -p 8080:8080 -v sessiond-data:/data \
#     --security-opt seccomp=unconfined --security-opt systempaths=unconfined sessiond
# The admin token is generated into /data/admin.token on first start (or set
# SESSIOND_ADMIN_TOKEN). The local sandbox is bubblewrap in an unprivileged user namespace: the
# default container profile blocks it (sethostname is refused by seccomp, mounting /proc by the
# masked /proc paths), hence the two --security-opt above. Do NOT --cap-add SYS_ADMIN: bwrap then
# refuses to start ("Unexpected capabilities but not setuid"). The alternative is
# SESSIOND_SANDBOX=process, which gives NO isolation. Only the `shell` agent is in the image
# (no node, no agents/bundled/node_modules). tools/docker_check.sh builds and runs this with
# podman (`make docker-check`).
FROM debian:12-slim AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gcc make pkg-config libc6-dev libmicrohttpd-dev libwebsockets-dev libsqlite3-dev \
      libjansson-dev libcurl4-openssl-dev libgit2-dev libssl-dev ca-certificates git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" build/sessiond build/sandbox-init build/sessiond-git

FROM debian:12-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libmicrohttpd12 libwebsockets17 libsqlite3-0 libjansson4 libcurl4 libgit2-1.5 libssl3 \
      bubblewrap ca-certificates git curl tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /data --shell /usr/sbin/nologin sessiond \
    && mkdir -p -m 0700 /data && chown sessiond /data
COPY --from=build /src/build/sessiond /src/build/sandbox-init /src/build/sessiond-git /usr/local/bin/
COPY --from=build /src/agents/bundled /usr/local/share/sessiond/agents
USER sessiond
ENV SESSIOND_LISTEN=0.0.0.0:8080 SESSIOND_DATA_DIR=/data
EXPOSE 8080
VOLUME /data
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsS "http://127.0.0.1:${SESSIOND_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/sessiond"]

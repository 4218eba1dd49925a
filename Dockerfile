# syntax=docker/dockerfile:1
#
# The rampart binary in a distroless image: no shell, no package manager, user nonroot.
#
#   docker build -t rampart .
#   docker run -p 8080:8080 -v rampart-data:/var/lib/rampart rampart
#
# With nothing mounted it runs on the embedded defaults (SQLite and generated secrets in
# the /var/lib/rampart volume). For production mount a configuration at
# /etc/rampart/rampart.toml (or name one with RAMPART_CONFIG) and give the secrets as files:
# deploy/compose.yaml does both.

# Build on the same Debian release as the runtime image below, so that the binary needs no
# newer glibc than the one distroless ships (Debian 12: 2.36).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions of Cargo.lock. The release profile of the
# workspace (thin LTO) applies. The cache mounts keep the registry and the target directory
# between builds; the binary is copied out of the mount, which is not part of any layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package rampart-cli --bin rampart \
    && install -D -m 0755 target/release/rampart /out/usr/local/bin/rampart \
    && install -d -m 0755 /out/etc/rampart /out/var/lib/rampart

# cc: glibc, libgcc and CA certificates, nothing else (TLS is rustls with built-in roots).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/rampart /usr/local/bin/rampart
COPY --from=build /out/etc/rampart /etc/rampart
# The volume's mount point, owned by nonroot (65532): a new named volume starts as a copy
# of it, ownership included, so the unprivileged process can write there.
COPY --from=build --chown=65532:65532 --chmod=0700 /out/var/lib/rampart /var/lib/rampart
USER nonroot:nonroot
# The working directory is where a mounted rampart.toml (and .env) is found without
# RAMPART_CONFIG; nothing else is read or written there.
WORKDIR /etc/rampart
ENV RAMPART_SERVER__LISTEN=0.0.0.0:8080 \
    RAMPART_SERVER__DATA_DIR=/var/lib/rampart \
    RAMPART_LOG__FORMAT=json
# The embedded SQLite database and the generated secrets.toml live here when the
# configuration does not name PostgreSQL and give every secret.
VOLUME ["/var/lib/rampart"]
EXPOSE 8080
# No HEALTHCHECK: distroless has no shell, curl or wget to run one, and rampart has no
# probe command. Let the orchestrator probe over HTTP instead: GET /healthz (liveness,
# 200 while the process runs) and GET /readyz (readiness, 503 while a store is unreachable
# or the process is shutting down). SIGTERM drains for server.shutdown_timeout (30 s by
# default): give the container a longer stop grace period than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rampart"]
CMD ["serve"]

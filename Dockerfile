# syntax=docker/dockerfile:1
# AuthBridge: one binary for the sidecar, the init container and local dev.
#   docker build -t authbridge .                 # sidecar image (distroless, runs as 1337)
#   docker build -t authbridge-init --target init .   # init container with iptables

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p authbridge \
 && install -D -m 0755 target/release/authbridge /out/authbridge

# Init container: installs the capture rules (needs NET_ADMIN + NET_RAW, runs as root).
FROM debian:bookworm-slim AS init
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables=1.8.9-2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/authbridge /usr/local/bin/authbridge
ENTRYPOINT ["/usr/local/bin/authbridge", "init-iptables"]

# Sidecar: small, no shell, UID 1337 (the UID the capture rules exempt).
FROM gcr.io/distroless/cc-debian12:nonroot AS sidecar
COPY --from=build /out/authbridge /usr/local/bin/authbridge
USER 1337:1337
EXPOSE 15123 15124 9901
ENTRYPOINT ["/usr/local/bin/authbridge"]
CMD ["run", "--config", "/etc/authbridge/config.yaml"]

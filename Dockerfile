# token-agent on scratch: one static binary and a CA bundle, nothing else — no shell, no
# package manager, no libc. Build it with `scripts/image.sh`, which compiles the static musl
# binary first and stages it with the bundle in target/image/ (the build context): no builder
# image is pulled, so this works on machines without registry access.
#
# CA bundle: the build host's /etc/ssl/certs/ca-certificates.crt (Debian's ca-certificates),
# at the path rustls-native-certs looks at first. It trusts public issuers; `ca_file` adds a
# private CA on top, and `SSL_CERT_FILE` / `SSL_CERT_DIR` replace the bundle (mount your own).
FROM scratch
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="token-agent" \
      org.opencontainers.image.description="Keeps short-lived credentials fresh for workloads on Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY token-agent /token-agent
# Where the chart mounts the config (a ConfigMap directory, so live reload sees updates).
ENV TOKEN_AGENT_CONFIG=/etc/token-agent/config.yaml
# The distroless "nonroot" uid: no passwd entry needed, never root.
USER 65532:65532
ENTRYPOINT ["/token-agent"]
CMD ["run"]

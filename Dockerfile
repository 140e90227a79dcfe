# meshca container image: one image for `meshca ca` (Deployment) and `meshca agent` (DaemonSet).
#
#   docker build --build-arg MESHCA_COMMIT=$(git rev-parse HEAD) -t meshca:0.1.0 .
#
# Two stages: the first compiles TypeScript with the dev dependencies; the second holds only Node, the production
# dependencies, dist/ and proto/. No HEALTHCHECK: Kubernetes probes /ready and /healthz (CA, port 15014) and
# /healthz/ready (agent, port 15020) instead; see deploy/kubernetes/.

# Node.js 24, an LTS line (upstream support until 2028-04-30), pinned by digest: every build starts from the same bytes,
# and a changed image comes in as a reviewed edit of this line, not silently with a re-pushed tag. The digest is the
# multi-platform index of node:24-bookworm-slim as `docker buildx imagetools inspect node:24-bookworm-slim` printed it
# on 2026-05-21 (quoted in https://github.com/openclaw/openclaw/issues/84981, pinned by its PR #84988). To update:
# run that command and replace the digest (test/manifests.test.ts requires a Node.js 24 slim image by digest).
ARG NODE_IMAGE=node:24-bookworm-slim@sha256:4e6b70dd6cbfc88c8157ba19aa3d9f9cce6ba4703576d55459e45efcbc9c5f5d

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the package's `prepare` script builds, and the sources are not copied yet.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY proto ./proto
COPY src ./src
COPY scripts/build-info.mjs ./scripts/
# The context has no .git: pass the commit for `meshca version` and meshca_build_info, e.g.
#   docker build --build-arg MESHCA_COMMIT=$(git rev-parse HEAD) -t meshca:0.1.0 .
ARG MESHCA_COMMIT=unknown
RUN MESHCA_COMMIT=${MESHCA_COMMIT} npm run build

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /opt/meshca
COPY package.json package-lock.json ./
# Production dependencies only. --ignore-scripts skips `prepare` (no TypeScript here); no runtime dependency needs an
# install script. npm itself is removed afterwards: nothing runs it in the container, and it is attack surface.
RUN npm ci --omit=dev --ignore-scripts \
 && npm cache clean --force \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
COPY --from=build /src/dist ./dist
COPY proto ./proto
# `meshca` on PATH: node follows the symlink, so dist/ and proto/ are found next to the real file.
RUN chmod 0755 dist/cli.js && ln -s /opt/meshca/dist/cli.js /usr/local/bin/meshca
# The image's `node` user, by number so that Kubernetes' runAsNonRoot can check it.
USER 1000:1000
# Istio's relative default paths (./etc/cacerts, ./var/run/secrets/...) resolve from / as they do for istiod.
WORKDIR /
ENTRYPOINT ["meshca"]
CMD ["--help"]

# meshca container image: one image for `meshca ca` (Deployment) and `meshca agent` (DaemonSet).
#
#   docker build --build-arg MESHCA_COMMIT=$(git rev-parse HEAD) -t meshca:0.1.0 .
#
# Three stages: `build` compiles TypeScript with the dev dependencies; `deps` installs the production dependencies
# and compiles the one native addon among them, pkcs11js (the PKCS#11 binding behind `--ca-source pkcs11`), with
# python3, make and g++; `runtime` holds only Node, the production node_modules copied from `deps`, dist/ and proto/,
# and no compiler. No HEALTHCHECK: Kubernetes probes /ready and /healthz (CA, port 15014) and /healthz/ready (agent,
# port 15020) instead; see deploy/kubernetes/.
#
# No PKCS#11 module is in the image: SoftHSM2 is a software token for tests and trials, not an HSM, and a real HSM's
# library (libCryptoki2_64.so, libcloudhsm_pkcs11.so, libkmsp11.so, ...) comes from its vendor. The admin adds it:
# mount the vendor's .so and its configuration into the pod and point --pkcs11-module at it, or build a derived image,
# e.g. for a SoftHSM2 trial:
#   FROM meshca:0.1.0
#   USER 0
#   RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 && rm -rf /var/lib/apt/lists/*
#   USER 1000:1000
# (module /usr/lib/softhsm/libsofthsm2.so; point SOFTHSM2_CONF at a softhsm2.conf whose directories.tokendir is a
# volume uid 1000 can write). See docs/pkcs11.md.

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
COPY scripts/build-info.mjs scripts/bundle.mjs ./scripts/
# The context has no .git: pass the commit for `meshca version` and meshca_build_info, e.g.
#   docker build --build-arg MESHCA_COMMIT=$(git rev-parse HEAD) -t meshca:0.1.0 .
ARG MESHCA_COMMIT=unknown
RUN MESHCA_COMMIT=${MESHCA_COMMIT} npm run build

FROM ${NODE_IMAGE} AS deps
# The toolchain node-gyp needs for pkcs11js. It stays in this stage: the runtime stage copies node_modules only.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/meshca
COPY package.json package-lock.json ./
# Production dependencies only. --ignore-scripts skips every install script, including our own `prepare` (no
# TypeScript here); then `npm rebuild pkcs11js` runs the one install script meshca needs (node-gyp rebuild), against
# the headers of the image's own Node.js in /usr/local/include/node (npm_config_nodedir), so nothing is downloaded
# besides the npm packages. The build fails here, not at the CA's start, if the addon was not built or does not load.
RUN npm ci --omit=dev --ignore-scripts \
 && npm_config_nodedir=/usr/local npm rebuild pkcs11js \
 && test -f node_modules/pkcs11js/build/Release/pkcs11.node \
 && node -e "require('pkcs11js')" \
 && rm -rf node_modules/pkcs11js/build/Release/obj.target node_modules/pkcs11js/build/Release/.deps

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /opt/meshca
COPY package.json package-lock.json ./
# The production dependencies as `deps` installed and built them (the same base image, so the addon's libc and
# libstdc++ are the ones it was compiled against). npm itself is removed: nothing runs it in the container, and it is
# attack surface.
COPY --from=deps /opt/meshca/node_modules ./node_modules
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
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

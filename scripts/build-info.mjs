#!/usr/bin/env node
// Writes dist/build-info.json, which `meshca version` and the meshca_build_info metric read: the commit the build
// was made from. Taken from `git rev-parse HEAD` when the sources are a git checkout, else from MESHCA_COMMIT (the
// Dockerfile's build argument: the image's build context has no .git), else "unknown".
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import process from 'node:process';

function gitCommit() {
  try {
    const out = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return /^[0-9a-f]{40}$/.test(out) ? out : undefined;
  } catch {
    return undefined;
  }
}

const fromEnv = process.env.MESHCA_COMMIT?.trim();
const commit = gitCommit() ?? (fromEnv ? fromEnv : 'unknown');
mkdirSync('dist', { recursive: true });
writeFileSync('dist/build-info.json', `${JSON.stringify({ commit })}\n`);

/**
 * The local JWT issuer of `meshca dev`: it stands in for the Kubernetes service-account token issuer, so the CA's
 * JWT authenticator can be tried without a cluster. Its ES256 key lives in the state directory
 * (dev-jwt-key.pem 0600, public keys in dev-jwks.json, which the dev CA trusts through a JWT rule).
 */
import { createPrivateKey, createPublicKey, generateKeyPair, randomUUID, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { calculateJwkThumbprint, exportJWK, SignJWT, type JWK } from 'jose';
import { ensurePrivateDirectory, writeFileAtomic } from '../util/fs.js';
import type { JwtRule } from './jwt.js';

export const DEV_ISSUER = 'https://meshca.dev.local';
const DEV_JWT_KEY_FILE = 'dev-jwt-key.pem';
const DEV_JWKS_FILE = 'dev-jwks.json';

const generateKeyPairAsync = promisify(generateKeyPair);
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export class DevIssuerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DevIssuerError';
  }
}

export interface MintOptions {
  namespace: string;
  serviceAccount: string;
  audiences: readonly string[];
  ttlSeconds: number;
  /** Binds the token to a pod, like a projected token (`kubernetes.io.pod`). */
  pod?: { name: string; uid: string };
  now?: number;
}

/** Checks names the way Kubernetes does, so a dev token is never something a cluster could not issue. */
function validateServiceAccountRef(namespace: string, serviceAccount: string): void {
  if (namespace.length > 63 || !DNS_LABEL.test(namespace)) {
    throw new DevIssuerError(`invalid namespace "${namespace}": use lowercase letters, digits and "-" (at most 63 characters)`);
  }
  if (serviceAccount.length > 253 || !DNS_SUBDOMAIN.test(serviceAccount)) {
    throw new DevIssuerError(`invalid service account "${serviceAccount}": use lowercase letters, digits, "-" and "."`);
  }
}

export class DevTokenIssuer {
  private constructor(
    private readonly privateKey: KeyObject,
    readonly kid: string,
    readonly keyPath: string,
    readonly jwksPath: string,
  ) {}

  /**
   * Loads the issuer `meshca dev` created in `stateDir`; refuses when there is none, since a new key would mint
   * tokens that no running CA trusts.
   */
  static async load(stateDir: string): Promise<DevTokenIssuer> {
    const keyPath = path.join(stateDir, DEV_JWT_KEY_FILE);
    try {
      await fs.access(keyPath);
    } catch {
      throw new DevIssuerError(
        `no dev issuer in ${stateDir} (no ${DEV_JWT_KEY_FILE}): run \`meshca dev --state-dir ${stateDir}\` first, or pass --init to create an issuer there (a CA must then trust ${path.join(stateDir, DEV_JWKS_FILE)})`,
      );
    }
    return DevTokenIssuer.loadOrCreate(stateDir);
  }

  /** Loads the issuer key from `stateDir`, creating it (and the JWKS) on first use. */
  static async loadOrCreate(stateDir: string): Promise<DevTokenIssuer> {
    const keyPath = path.join(stateDir, DEV_JWT_KEY_FILE);
    const jwksPath = path.join(stateDir, DEV_JWKS_FILE);
    try {
      await ensurePrivateDirectory(stateDir);
    } catch (error) {
      throw new DevIssuerError(`cannot create state directory ${stateDir}: ${(error as Error).message} (set --state-dir to a writable directory)`);
    }
    let privateKey: KeyObject;
    let keyPem: string | null = null;
    try {
      keyPem = await fs.readFile(keyPath, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new DevIssuerError(`cannot read ${keyPath}: ${(error as Error).message}`);
    }
    if (keyPem === null) {
      ({ privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'prime256v1' }));
      await writeFileAtomic(keyPath, privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, 0o600);
    } else {
      try {
        privateKey = createPrivateKey({ key: keyPem, format: 'pem' });
      } catch {
        throw new DevIssuerError(`${keyPath} is not a readable PEM private key; delete it to create a new dev issuer key`);
      }
      if (privateKey.asymmetricKeyType !== 'ec' || privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
        throw new DevIssuerError(`${keyPath} is not an ECDSA P-256 key; delete it to create a new dev issuer key`);
      }
    }
    const publicJwk = await exportJWK(createPublicKey(privateKey));
    const kid = await calculateJwkThumbprint(publicJwk);
    const jwk: JWK = { ...publicJwk, kid, alg: 'ES256', use: 'sig' };
    const jwksText = `${JSON.stringify({ keys: [jwk] }, null, 2)}\n`;
    // The JWKS is derived from the key, so it is rewritten whenever it is missing or stale.
    const current = await fs.readFile(jwksPath, 'utf8').catch(() => null);
    if (current !== jwksText) await writeFileAtomic(jwksPath, jwksText, 0o644);
    return new DevTokenIssuer(privateKey, kid, keyPath, jwksPath);
  }

  /** A JWT rule that makes the CA trust this issuer. */
  jwtRule(audiences: readonly string[]): JwtRule {
    return { issuer: DEV_ISSUER, jwksFile: this.jwksPath, audiences: [...audiences] };
  }

  /** Mints a token shaped like a projected Kubernetes service-account token. */
  async mint(options: MintOptions): Promise<string> {
    validateServiceAccountRef(options.namespace, options.serviceAccount);
    if (!(options.ttlSeconds > 0)) throw new DevIssuerError('the token lifetime must be positive');
    if (options.audiences.length === 0) throw new DevIssuerError('a token needs at least one audience');
    const now = Math.floor((options.now ?? Date.now()) / 1000);
    const kubernetes: Record<string, unknown> = {
      namespace: options.namespace,
      serviceaccount: { name: options.serviceAccount, uid: randomUUID() },
      ...(options.pod ? { pod: { name: options.pod.name, uid: options.pod.uid } } : {}),
    };
    return new SignJWT({ 'kubernetes.io': kubernetes })
      .setProtectedHeader({ alg: 'ES256', kid: this.kid, typ: 'JWT' })
      .setIssuer(DEV_ISSUER)
      .setSubject(`system:serviceaccount:${options.namespace}:${options.serviceAccount}`)
      .setAudience([...options.audiences])
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + Math.floor(options.ttlSeconds))
      .setJti(randomUUID())
      .sign(this.privateKey);
  }
}

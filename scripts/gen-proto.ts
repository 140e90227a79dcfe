/**
 * Regenerates the TypeScript types for meshca's protos (`proto/`) into
 * src/wire/generated/ with proto-loader-gen-types (shipped in @grpc/proto-loader).
 *
 *   npm run gen:proto
 *
 * The options mirror the runtime loader options in src/wire/protos.ts
 * (keepCase, longs: String, enums: String, defaults, oneofs), so the generated
 * `__Output` types describe exactly what handlers and client callbacks receive.
 * test/proto-generated.test.ts regenerates into a temporary directory and
 * requires the committed files to match byte for byte.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root: the nearest directory above this file with a package.json (scripts/, or .test-build/scripts/ when compiled for the tests). */
export const REPO_ROOT: string = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = path.dirname(dir);
  }
  return dir;
})();

/** Where the committed generated types live, relative to the repository root. */
export const GENERATED_DIR = 'src/wire/generated';

/**
 * The root .proto files; everything they import is generated too. Services get
 * grpc-js client/handler types and a `ProtoGrpcType` root file (ca.ts, sds.ts, trust_bundles.ts).
 */
export const SERVICE_PROTOS: readonly string[] = ['istio/v1/auth/ca.proto', 'envoy/service/secret/v3/sds.proto', 'meshca/federation/v1/trust_bundles.proto'];

/**
 * Message-only roots (the SDS `Secret` carried inside google.protobuf.Any, and the SPIFFE validator configuration
 * carried inside the Secret's custom_validator_config). Generated
 * without --grpcLib, which would emit a root file with unused imports for a file with no service.
 */
export const MESSAGE_PROTOS: readonly string[] = [
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto',
];

/** proto-loader-gen-types arguments shared by both runs, apart from the output directory. */
export const GENERATOR_ARGS: readonly string[] = [
  '--keepCase',
  '--longs=String',
  '--enums=String',
  '--defaults',
  '--oneofs',
  '--importFileExtension=.js',
  // Relative include dir: the "Original file:" comments then name repo paths, not this machine's.
  '-I',
  'proto',
];

/** Writes freshly generated types into `outDir` (absolute, or relative to the repo root), replacing its contents. */
export function generateProtoTypes(outDir: string): void {
  const target = path.resolve(REPO_ROOT, outDir);
  rmSync(target, { recursive: true, force: true });
  const bin = path.join(REPO_ROOT, 'node_modules', '@grpc', 'proto-loader', 'build', 'bin', 'proto-loader-gen-types.js');
  const run = (extra: readonly string[], protos: readonly string[]): void => {
    execFileSync(process.execPath, [bin, ...GENERATOR_ARGS, ...extra, '-O', target, ...protos], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  };
  // Message types shared by both runs come out identical; the service run goes last.
  run([], MESSAGE_PROTOS);
  run(['--grpcLib=@grpc/grpc-js'], SERVICE_PROTOS);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  generateProtoTypes(GENERATED_DIR);
  console.log(`generated ${GENERATED_DIR} from ${[...SERVICE_PROTOS, ...MESSAGE_PROTOS].join(', ')}`);
}

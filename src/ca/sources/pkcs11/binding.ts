/**
 * pkcs11js, the PKCS#11 binding (a native addon built by node-gyp at `npm install`; see docs/design/pkcs11.md for
 * why this one). Loaded with import() only when a PKCS#11 key is opened: a CA that never uses an HSM does not load
 * the addon, and one whose addon failed to build gets one line that says what to install, not a crash at start.
 * Elsewhere in src/ the package is named in `import type` only.
 */
import type * as Pkcs11Js from 'pkcs11js';
import { CaConfigError } from '../../errors.js';

export type Pkcs11Binding = typeof Pkcs11Js;

let loading: Promise<Pkcs11Binding> | undefined;

export function loadPkcs11Binding(): Promise<Pkcs11Binding> {
  loading ??= import('pkcs11js').then(
    // A CommonJS module: its exports arrive as the default export (and, depending on the loader, as names too).
    (module) => ((module as { default?: Pkcs11Binding }).default ?? module) as Pkcs11Binding,
    (error: unknown) => {
      loading = undefined;
      const reason = error instanceof Error ? error.message.split('\n')[0] : String(error);
      throw new CaConfigError(
        `the PKCS#11 binding pkcs11js cannot be loaded (${reason}); it is a native addon that \`npm install\` builds with python3, make and g++ (apt-get install -y python3 make g++, then npm rebuild pkcs11js)`,
        { cause: error },
      );
    },
  );
  return loading;
}

/**
 * Minimal `Reflect` metadata shim for the stand-ins.
 *
 * @peculiar/x509 registers its algorithm providers through tsyringe, which refuses to load unless a
 * `Reflect.getMetadata` polyfill is present (normally `reflect-metadata`, which is not a dependency of this
 * project). x509 never emits decorator metadata, so a tiny WeakMap-backed store is all tsyringe needs.
 * Installed only when no polyfill is present; imported (for its side effect) before @peculiar/x509.
 */
type MetadataStore = WeakMap<object, Map<unknown, unknown>>;

const reflect = Reflect as unknown as Record<string, unknown>;

if (typeof reflect.getMetadata !== 'function') {
  const store: MetadataStore = new WeakMap();
  const own = (target: object, create: boolean): Map<unknown, unknown> | undefined => {
    let map = store.get(target);
    if (!map && create) {
      map = new Map();
      store.set(target, map);
    }
    return map;
  };
  reflect.defineMetadata = (key: unknown, value: unknown, target: object): void => {
    own(target, true)?.set(key, value);
  };
  reflect.getOwnMetadata = (key: unknown, target: object): unknown => own(target, false)?.get(key);
  reflect.hasOwnMetadata = (key: unknown, target: object): boolean => own(target, false)?.has(key) ?? false;
  reflect.getMetadata = (key: unknown, target: object): unknown => {
    for (let o: object | null = target; o; o = Object.getPrototypeOf(o) as object | null) {
      const map = own(o, false);
      if (map?.has(key)) return map.get(key);
    }
    return undefined;
  };
  reflect.hasMetadata = (key: unknown, target: object): boolean =>
    (reflect.getMetadata as (k: unknown, t: object) => unknown)(key, target) !== undefined;
  reflect.metadata =
    (key: unknown, value: unknown) =>
    (target: object): void => {
      own(target, true)?.set(key, value);
    };
}

export {};

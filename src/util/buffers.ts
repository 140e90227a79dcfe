/**
 * Buffers meant to be kept. Node hands out Buffers under 4 KiB as slices of shared 8 KiB slabs, and one small slice
 * that stays alive keeps its whole slab alive: a certificate's DER or an encoded secret, held for hours among
 * slabs whose other bytes were short-lived, costs 8 KiB instead of its size (seen in heap snapshots of the agent).
 */

/** `bytes` in memory of their own, not a slice of a shared pool slab. */
export function ownedCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(bytes.length);
  copy.set(bytes);
  return copy;
}

/** Base64 text decoded into memory of its own (what `Buffer.from(text, 'base64')` gives, without the pool). */
export function ownedFromBase64(text: string): Buffer {
  const out = Buffer.allocUnsafeSlow(Buffer.byteLength(text, 'base64'));
  const written = out.write(text, 'base64');
  return written === out.length ? out : out.subarray(0, written);
}

/** Turning listen failures into one line that names the address and the flag to change. */

/** A configured listen address: `text` is what the admin wrote (for messages). */
export interface ListenAddressText {
  host: string;
  port: number;
  text: string;
}

export class ListenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ListenError';
  }
}

/** host:port as grpc-js and humans expect it (IPv6 hosts in brackets). */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function listenError(address: ListenAddressText, what: string, flag: string, cause: unknown): ListenError {
  const text = cause instanceof Error ? cause.message : String(cause);
  const code = cause && typeof cause === 'object' && 'code' in cause ? String((cause as { code: unknown }).code) : '';
  if (code === 'EADDRINUSE' || /EADDRINUSE|address already in use/i.test(text)) {
    return new ListenError(`cannot listen on ${address.text} for ${what}: the address is already in use; stop the other process or choose another address with ${flag}`);
  }
  if (code === 'EACCES' || /EACCES|permission denied/i.test(text)) {
    return new ListenError(`cannot listen on ${address.text} for ${what}: permission denied (ports below 1024 need privileges); choose another address with ${flag}`);
  }
  if (code === 'EADDRNOTAVAIL' || /EADDRNOTAVAIL/i.test(text)) {
    return new ListenError(`cannot listen on ${address.text} for ${what}: the host address is not available on this machine; fix ${flag}`);
  }
  return new ListenError(`cannot listen on ${address.text} for ${what} (${flag}): ${text}`);
}

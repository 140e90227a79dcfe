/** The TLS protocol floor and cipher suites of every TLS server meshca runs. */

/** Oldest protocol meshca's TLS servers (the CA port, the bundle endpoint) accept: TLS 1.0/1.1 handshakes are refused. */
export const TLS_MIN_VERSION = 'TLSv1.2' as const;
/**
 * Only AEAD suites with forward secrecy: the TLS 1.3 suites (all AEAD) and, for TLS 1.2 clients, ECDHE with
 * AES-GCM or ChaCha20-Poly1305. CBC and static-RSA suites, which Node still enables by default, are left out.
 * The TLS 1.3 names must stay in the list: without them Node caps the protocol at TLS 1.2.
 */
export const TLS_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

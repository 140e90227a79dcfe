/** The logger cuts private key PEM from every log record, wherever it hides, without copying clean records. */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger, redactValue } from '../src/log.js';
import { exportPrivateKeyPem, generateKeyPairFor } from '../src/pki/index.js';

const KEY = exportPrivateKeyPem(generateKeyPairFor('ec-p256').privateKey);

describe('log redaction', () => {
  it('redacts key PEM in nested strings, arrays and errors, and leaves clean records untouched', () => {
    const clean = { a: 1, b: ['x', { c: 'y' }] };
    assert.equal(redactValue(clean), clean, 'a clean record is not copied');
    const dirty = { detail: { text: `before ${KEY} after` }, list: ['ok', KEY], err: new Error(`bad ${KEY}`) };
    const redacted = JSON.stringify(redactValue(dirty));
    assert.doesNotMatch(redacted, /PRIVATE KEY|BEGIN/, redacted);
    assert.match(redacted, /before \[redacted private key\]\\n after/);
    assert.match(dirty.detail.text, /PRIVATE KEY/, 'the caller’s object is not modified');
  });

  it('a logger writing JSON never prints the key', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    const logger = createLogger({ pretty: false, destination: out, level: 'trace' });
    logger.info({ where: { pem: KEY }, err: new Error(KEY) }, 'material seen');
    logger.flush();
    await new Promise((resolve) => setImmediate(resolve));
    assert.match(text, /material seen/, text);
    assert.doesNotMatch(text, /PRIVATE KEY-----/, text);
  });
});

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
    const logger = createLogger({ format: 'json', destination: out, level: 'trace' });
    logger.info({ where: { pem: KEY }, err: new Error(KEY) }, 'material seen');
    logger.flush();
    await new Promise((resolve) => setImmediate(resolve));
    assert.match(text, /material seen/, text);
    assert.doesNotMatch(text, /PRIVATE KEY-----/, text);
  });

  it('censors credential fields by name: top level, one level down, in errors and in child bindings', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    const logger = createLogger({ format: 'json', destination: out, level: 'info' });
    class TokenError extends Error {
      token = 'error-token';
    }
    const record = { token: 't1', key: 'k1', privateKey: 'p1', authorization: 'Bearer a1', req: { authorization: 'Bearer a2', token: 't2', key: 'kept' }, err: new TokenError('boom') };
    logger.info(record, 'top');
    logger.child({ token: 'child-token', worker: 1 }).child({ component: 'x' }).info('child');
    logger.flush();
    await new Promise((resolve) => setImmediate(resolve));
    const [top, child] = text.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.doesNotMatch(text, /t1|k1|p1|a1|a2|t2|error-token|child-token/, text);
    assert.deepEqual({ token: top!.token, key: top!.key, privateKey: top!.privateKey, authorization: top!.authorization }, {
      token: '[redacted]', key: '[redacted]', privateKey: '[redacted]', authorization: '[redacted]',
    }, 'top-level fields are censored');
    assert.deepEqual(top!.req, { authorization: '[redacted]', token: '[redacted]', key: 'kept' }, 'nested token/authorization censored, a nested "key" kept');
    assert.equal((top!.err as { type: string; message: string }).type, 'TokenError', 'an error keeps its type');
    assert.equal((top!.err as { message: string }).message, 'boom', 'and its message');
    assert.equal(child!.token, '[redacted]', 'child bindings are censored');
    assert.equal(child!.worker, 1, 'other bindings are kept');
    assert.equal(record.token, 't1', 'the caller’s record is not modified');
    assert.equal(record.req.token, 't2', 'nor its nested objects');
  });

  it('--log-format text: one line per event, time LEVEL message key=value, keys and credentials still cut', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    const logger = createLogger({ format: 'text', destination: out, level: 'info', name: 'agent' });
    logger.warn({ where: { pem: KEY }, token: 't1', err: new Error(`two\nlines ${KEY}`), count: 2 }, 'first\nevent');
    logger.info({ path: '/tmp/a b' }, 'second');
    await new Promise((resolve) => setImmediate(resolve));
    const lines = text.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 2, text);
    assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN {2}first event name=agent /);
    assert.match(lines[0]!, / token="\[redacted\]" /);
    assert.match(lines[0]!, / count=2( |$)/);
    assert.match(lines[1]!, / INFO {2}second name=agent path="\/tmp\/a b"$/);
    assert.doesNotMatch(text, /PRIVATE KEY-----|t1/, text);
  });

  it('--log-format json: ISO-8601 time and the level as a word', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    createLogger({ format: 'json', destination: out }).error('broken');
    await new Promise((resolve) => setImmediate(resolve));
    const record = JSON.parse(text) as { time: string; level: string };
    assert.equal(record.level, 'error');
    assert.equal(new Date(record.time).toISOString(), record.time);
  });
});

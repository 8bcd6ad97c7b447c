import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BangerError, ERROR_CODES, EXIT_CODES, ErrorCode, toBangerError } from '../../src/errors/index.js';
import { WIRE_CODES, fromWire, toWire } from '../../src/errors/wire.js';

test('every error code survives the trip to JSON-RPC and back, hint included', () => {
  for (const code of ERROR_CODES) {
    const e = new BangerError(code, `msg ${code}`, { hint: `do ${code}` });
    const back = fromWire(JSON.parse(JSON.stringify(toWire(e))) as ReturnType<typeof toWire>);
    assert.equal(back.code, code);
    assert.equal(back.message, `msg ${code}`);
    assert.equal(back.hint, `do ${code}`);
  }
});

test('wire codes are distinct and in the server-defined or request-cancelled range', () => {
  const codes = ERROR_CODES.map((c) => WIRE_CODES[c]);
  assert.equal(new Set(codes).size, codes.length);
  for (const c of codes) assert.ok((c <= -32000 && c >= -32099) || c === -32800, `${c}`);
});

test('a bare JSON-RPC error maps by its code; unknown codes become Internal', () => {
  assert.equal(fromWire({ code: -32602, message: 'bad params' }).code, ErrorCode.InvalidArgument);
  assert.equal(fromWire({ code: -32601, message: 'no such method' }).code, ErrorCode.Unimplemented);
  assert.equal(fromWire({ code: WIRE_CODES.NotFound, message: 'x' }).code, ErrorCode.NotFound);
  assert.equal(fromWire({ code: 1234, message: 'x' }).code, ErrorCode.Internal);
  assert.equal(fromWire({ code: 1, message: 'x', data: { bangerCode: 'Bogus' } }).code, ErrorCode.Internal);
});

test('exit codes of banger failures are distinct and avoid 0-63 (common program exit codes)', () => {
  const codes = ERROR_CODES.map((c) => EXIT_CODES[c]);
  assert.equal(new Set(codes).size, codes.length);
  for (const c of codes) assert.ok(c >= 64, `${c}`);
});

test('toBangerError keeps BangerErrors and wraps anything else as Internal', () => {
  const e = new BangerError(ErrorCode.Conflict, 'c');
  assert.equal(toBangerError(e), e);
  assert.equal(toBangerError(new Error('boom')).code, ErrorCode.Internal);
  assert.equal(toBangerError('str').message, 'str');
});

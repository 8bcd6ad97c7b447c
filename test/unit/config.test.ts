import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_CONFIG, parseConfig } from '../../src/shared/config.js';
import type { BangerError } from '../../src/errors/index.js';

test('an empty config gets every default', () => {
  assert.deepEqual(parseConfig({}), DEFAULT_CONFIG);
  assert.equal(DEFAULT_CONFIG.network.defaultMode, 'loopback');
  assert.equal(DEFAULT_CONFIG.network.tap.subnet, '172.30.0.0/24');
  assert.equal(DEFAULT_CONFIG.dns.address, '127.77.0.1');
  assert.equal(DEFAULT_CONFIG.qemu.tcgCacheMib, 128);
  assert.equal(DEFAULT_CONFIG.qemu.tcgGuestAslr, false);
});

test('a partial config keeps the other defaults', () => {
  const c = parseConfig({ network: { tap: { subnet: '10.99.0.0/24' } } });
  assert.equal(c.network.tap.subnet, '10.99.0.0/24');
  assert.equal(c.network.tap.bridge, 'banger0');
  assert.equal(c.network.defaultMode, 'loopback');
});

test('bad values and unknown keys are refused with the key named', () => {
  const cases: [unknown, RegExp][] = [
    [{ network: { defaultMode: 'bridge' } }, /network\.defaultMode/],
    [{ network: { tap: { subnet: '172.30.0.0' } } }, /network\.tap\.subnet/],
    [{ network: { tap: { bridge: 'a-very-long-bridge-name' } } }, /network\.tap\.bridge/],
    [{ dns: { port: 70000 } }, /dns\.port/],
    [{ qemu: { tcgCacheMib: 8 } }, /qemu\.tcgCacheMib/],
    [{ qemu: { tcgCacheMib: '128' } }, /qemu\.tcgCacheMib/],
    [{ qemu: { tcgGuestAslr: 'yes' } }, /qemu\.tcgGuestAslr/],
    [{ dnss: {} }, /dnss|top level/],
  ];
  for (const [raw, re] of cases)
    assert.throws(
      () => parseConfig(raw),
      (e: BangerError) => e.code === 'InvalidArgument' && re.test(e.message) && /fix or remove/.test(e.hint ?? ''),
      JSON.stringify(raw),
    );
});

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TransferRate, formatSeconds } from '../../src/cli/output.js';

void describe('transfer rate and time left (import progress)', () => {
  void it('shows nothing in the first second, then the rate since the first event and the time left', () => {
    let t = 0;
    const r = new TransferRate(() => t);
    assert.deepEqual(r.update('import', 0, 100 << 20), {});
    t = 500;
    assert.deepEqual(r.update('import', 2 << 20, 100 << 20), {}, 'under a second: no rate yet');
    t = 4000;
    const { perSecond, secondsLeft } = r.update('import', 20 << 20, 100 << 20);
    assert.equal(perSecond, 5 << 20, '20 MiB in 4 s');
    assert.equal(secondsLeft, 16, '80 MiB left at 5 MiB/s');
    assert.equal(r.update('import', 100 << 20, 100 << 20).secondsLeft, undefined, 'done: nothing left');
  });

  void it('starts again for a new step, and gives no time left without a total', () => {
    let t = 0;
    const r = new TransferRate(() => t);
    r.update('import', 0, 10);
    t = 5000;
    assert.deepEqual(r.update('export', 3), {});
    t = 7000;
    assert.deepEqual(r.update('export', 2003), { perSecond: 1000, secondsLeft: undefined });
  });

  void it('formats the time left as a person reads it', () => {
    assert.equal(formatSeconds(0.2), '1 s');
    assert.equal(formatSeconds(59), '59 s');
    assert.equal(formatSeconds(200), '3 min 20 s');
  });
});

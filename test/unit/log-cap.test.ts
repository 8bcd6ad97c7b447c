import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { capLog, rotatedLog } from '../../src/shared/log-cap.js';
import { scratchDir } from '../helpers/scratch.js';

test('a capped log keeps its newest whole lines in one rotated copy, and a writer holding it open goes on at its start', async () => {
  const dir = scratchDir('banger-logcap-');
  try {
    const log = join(dir, 'bangerd.log');
    const fd = openSync(log, 'a', 0o600); // as pino's destination and QEMU's append=on hold it
    for (let i = 0; i < 1000; i++) writeSync(fd, `{"msg":"line ${i}"}\n`);
    assert.equal(await capLog(log, 4096), true);
    const kept = readFileSync(rotatedLog(log), 'utf8');
    assert.ok(kept.length <= 4096);
    assert.match(kept, /^\{"msg":"line \d+"\}\n/, 'starts at a whole line');
    assert.match(kept, /\{"msg":"line 999"\}\n$/);
    for (const l of kept.trimEnd().split('\n')) JSON.parse(l);
    writeSync(fd, '{"msg":"after"}\n');
    closeSync(fd);
    assert.equal(readFileSync(log, 'utf8'), '{"msg":"after"}\n', 'no hole where the old bytes were');
    assert.equal(statSync(log).size, 16);
    assert.equal(await capLog(log, 4096), false, 'under the cap: left alone');
    assert.equal(await capLog(join(dir, 'missing.log'), 4096), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

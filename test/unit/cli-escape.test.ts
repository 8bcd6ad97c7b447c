import { test } from 'node:test';
import assert from 'node:assert/strict';
import { escapeForTerminal } from '../../src/shared/terminal-text.js';
import { changedFileLines } from '../../src/cli/commands/vm/workspace.js';
import { portsTable, vmDetails } from '../../src/cli/commands/vm/format.js';
import type { VmInfo } from '../../src/protocol/vm.js';

/** Any byte a terminal acts on: C0 controls (ESC, BEL, CR...), DEL and C1 controls (CSI U+009B...). */
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/; // eslint-disable-line no-control-regex

test('escapeForTerminal shows control characters instead of passing them on', () => {
  assert.equal(escapeForTerminal('a\x1b[2K\x1b[1Ab'), 'a\\e[2K\\e[1Ab');
  assert.equal(escapeForTerminal('x\ny\tz\r'), 'x\\ny\\tz\\r');
  assert.equal(escapeForTerminal('bell\x07 del\x7f csi\x9b'), 'bell\\x07 del\\x7f csi\\x9b');
  assert.equal(escapeForTerminal('rtl\u202eexe.txt'), 'rtl\\u202eexe.txt');
  // Backslashes are doubled, so a name that spells an escape is not mistaken for one.
  assert.equal(escapeForTerminal('lit\\e'), 'lit\\\\e');
  assert.equal(escapeForTerminal('plain/path-ü_1.txt'), 'plain/path-ü_1.txt');
});

test('workspace export: a guest file named with terminal escapes cannot wipe lines', () => {
  const files = [
    { status: 'M', path: 'a\x1b[2K\x1b[1Ab' },
    { status: 'A\x1b]0;pwned\x07', path: 'ok.txt' },
  ];
  for (const nameOnly of [true, false]) {
    const text = changedFileLines(files, nameOnly).join('\n');
    assert.doesNotMatch(text, CONTROL, JSON.stringify(text));
    assert.match(text, /a\\e\[2K\\e\[1Ab/);
  }
  assert.deepEqual(changedFileLines([{ status: 'D', path: 'src/x.ts' }], false), ['D\tsrc/x.ts']);
});

test('vm ports: guest process names and addresses are escaped', () => {
  const text = portsTable({
    name: 'v',
    dnsName: 'v.vm',
    hostAddress: '127.77.0.2',
    ports: [{ port: 8080, address: '0.0.0.0', process: 'evil\x1b[2J\x1b[H', forwarded: true, url: 'http://v.vm:8080' }],
  });
  assert.doesNotMatch(text, CONTROL);
  assert.match(text, /evil\\e\[2J\\e\[H/);
});

test('vm show: last error and problem text are escaped', () => {
  const v: VmInfo = {
    id: 'id',
    name: 'v',
    image: 'default',
    state: 'error',
    vcpus: 1,
    memoryMib: 512,
    diskSizeMib: 1024,
    vmm: 'qemu',
    accel: null,
    network: { mode: 'loopback', hostAddress: '127.77.0.2', sshPort: 22, guestAddress: '10.0.2.15', egress: false, forwardedPorts: [], portWatch: null },
    dnsName: 'v.vm',
    pid: null,
    channel: null,
    agent: true,
    lastError: 'guest said \x1b[31mno\x1b[0m',
    problem: 'console: \x9b2K',
    createdAt: new Date().toISOString(),
    startedAt: null,
    dir: '/x',
    disks: [],
    workspace: null,
    synced: null,
  };
  const text = vmDetails(v);
  assert.doesNotMatch(text, CONTROL);
  assert.match(text, /Last error: +guest said \\e\[31mno\\e\[0m/);
  assert.match(text, /Problem: +console: \\x9b2K/);
});

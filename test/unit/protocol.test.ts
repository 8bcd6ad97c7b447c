import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { addMachineFlags } from '../../src/cli/commands/vm/create.js';
import { ExecRegistry, buildHandlers, type HandlerDeps } from '../../src/daemon/rpc/handlers/index.js';
import { ACCEL_CHOICES, NETWORK_MODES, VMM_CHOICES } from '../../src/protocol/common.js';
import { ALL_METHODS } from '../../src/protocol/index.js';
import { VmMethods } from '../../src/protocol/vm.js';
import { parseConfig } from '../../src/shared/config.js';

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? tsFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}
const importsOf = (file: string) => [...readFileSync(file, 'utf8').matchAll(/from '([^']+)'/g)].map((m) => m[1]!);

test('the wire names of every method are the ones clients already use', () => {
  assert.deepEqual(
    ALL_METHODS.map((m) => m.method).sort(),
    [
      'daemon.status',
      'daemon.stop',
      'dns.install',
      'dns.status',
      'dns.uninstall',
      'doctor.run',
      'image.build',
      'image.delete',
      'image.list',
      'image.show',
      'network.down',
      'network.status',
      'pool.set',
      'pool.status',
      'session.attach',
      'session.list',
      'session.logs',
      'session.rm',
      'session.send',
      'session.show',
      'session.start',
      'session.stop',
      'snapshot.create',
      'snapshot.delete',
      'snapshot.list',
      'snapshot.show',
      'vm.create',
      'vm.delete',
      'vm.exec',
      'vm.fork',
      'vm.list',
      'vm.logs',
      'vm.ports',
      'vm.restart',
      'vm.set',
      'vm.show',
      'vm.ssh-target',
      'vm.start',
      'vm.stats',
      'vm.stop',
      'vm.sync',
      'vm.workspace.compare',
      'vm.workspace.export',
      'vm.workspace.prepare',
    ],
  );
});

test('the daemon has exactly one handler per protocol method', () => {
  const handlers = buildHandlers({} as HandlerDeps, new ExecRegistry());
  const served = handlers.map((h) => h.method.method).sort();
  assert.deepEqual(served, ALL_METHODS.map((m) => m.method).sort());
  // Each handler validates with the protocol's own schema object, not a copy.
  for (const h of handlers) assert.equal(h.method, ALL_METHODS.find((m) => m.method === h.method.method));
});

test('vm.create params: rm is part of the schema; enums come from the tuples', () => {
  const schema = VmMethods.create.params;
  assert.deepEqual(schema.parse({ rm: true, vmm: 'qemu', accel: 'tcg', network: 'tap' }), {
    rm: true,
    vmm: 'qemu',
    accel: 'tcg',
    network: 'tap',
  });
  assert.equal(schema.safeParse({ rm: 'yes' }).success, false);
  for (const vmm of VMM_CHOICES) assert.ok(schema.safeParse({ vmm }).success, vmm);
  assert.equal(schema.safeParse({ vmm: 'kvmtool' }).success, false);
});

test('the CLI offers exactly the protocol choices', () => {
  const cmd = addMachineFlags(new Command('create'));
  const choices = (flag: string) => cmd.options.find((o) => o.long === flag)?.argChoices;
  assert.deepEqual(choices('--vmm'), [...VMM_CHOICES]);
  assert.deepEqual(choices('--accel'), [...ACCEL_CHOICES]);
  assert.deepEqual(choices('--network'), [...NETWORK_MODES]);
});

test('config accepts every network mode and the shared interface-name check', () => {
  for (const mode of NETWORK_MODES) assert.equal(parseConfig({ network: { defaultMode: mode } }).network.defaultMode, mode);
  assert.equal(parseConfig({ network: { tap: { bridge: 'br.vm-0' } } }).network.tap.bridge, 'br.vm-0');
  assert.throws(() => parseConfig({ network: { tap: { bridge: 'br 0' } } }), /network\.tap\.bridge/);
});

test('layering: services never import the RPC layer; the protocol imports no daemon, CLI or client code', () => {
  for (const f of tsFiles('src/daemon/services'))
    for (const i of importsOf(f)) assert.doesNotMatch(i, /\/rpc\//, `${f} imports ${i}`);
  for (const f of tsFiles('src/protocol'))
    for (const i of importsOf(f)) assert.doesNotMatch(i, /\.\.\/(daemon|cli|client|shared)\//, `${f} imports ${i}`);
});

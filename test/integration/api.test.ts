/**
 * The package's TypeScript API (`connect` from src/client) against the daemon in-process on a temp
 * BANGER_HOME with fake image builds, and the built package imported by name from a separate project.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { connect, type Banger } from '../../src/client/api.js';
import { startDaemon, type RunningDaemon } from '../../src/daemon/daemon.js';
import type { ImageBuilder } from '../../src/daemon/services/image/service.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import type { ProgressEvent } from '../../src/protocol/common.js';
import { AGENT_PROTOCOL_VERSION } from '../../src/protocol/agent.js';
import { silentLogger } from '../../src/shared/logger.js';
import { Paths } from '../../src/shared/paths.js';
import { scratchDir } from '../helpers/scratch.js';

const run = promisify(execFile);
const repo = resolve(import.meta.dirname, '..', '..');
const home = scratchDir('banger-api-int-');
const paths = new Paths(home);
const dns = { listen: [{ host: '127.0.0.1', port: 0 }], hostsFile: join(home, 'hosts') };
let daemon: RunningDaemon;
let b: Banger;
/** While set, the build of `default` waits until it is cancelled. */
let holdBuilds = true;
let buildAborted = false;

const fakeBuild: ImageBuilder = async (req, outDir, progress, signal) => {
  progress({ kind: 'step', step: 'bootstrap rootfs', index: 1, total: 2 });
  if (holdBuilds)
    await new Promise<void>((_, reject) => {
      const stop = () => {
        buildAborted = true;
        reject(new Error('aborted'));
      };
      if (signal?.aborted) stop();
      signal?.addEventListener('abort', stop);
    });
  progress({ kind: 'step', step: 'checksum', index: 2, total: 2 });
  const files = (['kernel', 'initrd', 'rootfs'] as const).map((role) => {
    const path = join(outDir, role);
    writeFileSync(path, role);
    return { role, path, sizeBytes: role.length, sha256: '0'.repeat(64) };
  });
  return { kernelVersion: 'test', files, params: { suite: 'bookworm', mirror: 'test', packages: req.packages, agentProtocol: AGENT_PROTOCOL_VERSION } };
};

async function failure(p: Promise<unknown>): Promise<BangerError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof BangerError, `a BangerError, got ${String(e)}`);
    return e;
  }
  throw new Error('expected a failure');
}

void describe('the TypeScript API against bangerd in-process', () => {
  before(async () => {
    daemon = await startDaemon({ paths, log: silentLogger(), build: fakeBuild, dns, onStopRequest: () => undefined });
    b = await connect({ home });
  });
  after(async () => {
    await b.close();
    await daemon.stop();
    rmSync(home, { recursive: true, force: true });
  });

  void it('connects by home and lists no VMs', async () => {
    assert.deepEqual(await b.vm.list(), []);
  });

  void it('an aborted signal cancels vm.create in the daemon (the first-use image build stops) and leaves no VM', async () => {
    const ac = new AbortController();
    const events: ProgressEvent[] = [];
    const p = b.vm.create({ name: 'cancelled', vmm: 'qemu', accel: 'tcg' }, { signal: ac.signal, onProgress: (e) => events.push(e) });
    for (let i = 0; i < 100 && !events.some((e) => e.kind === 'step'); i++) await sleep(20);
    assert.ok(events.some((e) => e.kind === 'step'), 'the build started');
    ac.abort();
    assert.equal((await failure(p)).code, ErrorCode.Cancelled);
    for (let i = 0; i < 50 && !buildAborted; i++) await sleep(20);
    assert.ok(buildAborted, 'the build saw the cancellation');
    assert.deepEqual(await b.vm.list(), []);
  });

  void it('vm.create reports progress and returns the VM; show and delete find it', async () => {
    holdBuilds = false;
    const steps: string[] = [];
    const v = await b.vm.create({ name: 'api-a', vmm: 'qemu', accel: 'tcg' }, { onProgress: (e) => e.kind === 'step' && steps.push(e.step) });
    assert.equal(v.name, 'api-a');
    assert.equal(v.state, 'created');
    assert.deepEqual(steps.slice(0, 2), ['bootstrap rootfs', 'checksum']);
    assert.equal((await b.vm.show('api-a')).id, v.id);
    assert.deepEqual((await b.vm.list()).map((x) => x.name), ['api-a']);
  });

  void it('vm.set changes a stopped VM; shrinking its disk is InvalidArgument; sync needs it running', async () => {
    const v = await b.vm.set('api-a', { cpus: 3, memoryMib: 1536 });
    assert.deepEqual([v.vcpus, v.memoryMib], [3, 1536]);
    const err = await failure(b.vm.set('api-a', { diskSizeMib: 64 }));
    assert.equal(err.code, ErrorCode.InvalidArgument);
    assert.equal((await failure(b.vm.sync('api-a'))).code, ErrorCode.FailedPrecondition);
  });

  void it('maps daemon errors to BangerError codes with hints', async () => {
    const nf = await failure(b.vm.show('nope'));
    assert.equal(nf.code, ErrorCode.NotFound);
    assert.match(nf.hint ?? '', /banger vm list/);
    assert.equal((await failure(b.vm.create({ name: '../x' }))).code, ErrorCode.InvalidArgument);
    assert.equal((await failure(b.vm.create({ name: 'api-a', vmm: 'qemu', accel: 'tcg' }))).code, ErrorCode.AlreadyExists);
    assert.equal((await failure(b.vm.exec('api-a', ['true']))).code, ErrorCode.FailedPrecondition, 'a VM that is not running');
    assert.equal((await failure(b.vm.delete('nope'))).code, ErrorCode.NotFound);
    assert.deepEqual(await b.vm.delete('api-a'), { deleted: 'api-a' });
  });

  void it('connect without autoStart to a home with no daemon is Unavailable; an aborted connect is Cancelled', async () => {
    const empty = scratchDir('banger-api-none-');
    try {
      const e = await failure(connect({ home: empty, autoStart: false }));
      assert.equal(e.code, ErrorCode.Unavailable);
      assert.match(e.hint ?? '', /banger daemon start/);
      const ac = new AbortController();
      ac.abort();
      assert.equal((await failure(connect({ home, signal: ac.signal }))).code, ErrorCode.Cancelled);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  void it("a separate project imports the built package by name ('banger'), with its types", async (t) => {
    if (!existsSync(join(repo, 'dist', 'index.js')) || !existsSync(join(repo, 'dist', 'types', 'client', 'index.d.ts')))
      assert.fail('dist/index.js and dist/types are missing: run `npm run build` first');
    const project = scratchDir('banger-consumer-');
    t.after(() => rmSync(project, { recursive: true, force: true }));
    mkdirSync(join(project, 'node_modules'));
    symlinkSync(repo, join(project, 'node_modules', 'banger'), 'dir');
    writeFileSync(join(project, 'package.json'), JSON.stringify({ type: 'module' }));
    const source = `import { connect, BangerError, ErrorCode, type VmInfo } from 'banger';
const b = await connect({ home: process.argv[2] });
const vms: VmInfo[] = await b.vm.list();
let code: string | undefined;
try { await b.vm.show('nope'); } catch (e) { code = e instanceof BangerError ? e.code : 'not a BangerError'; }
await b.close();
console.log(JSON.stringify({ vms: vms.length, code, same: code === ErrorCode.NotFound }));
`;
    writeFileSync(join(project, 'main.ts'), source);
    writeFileSync(
      join(project, 'main.mjs'),
      source.replace(', type VmInfo', '').replace(': VmInfo[]', '').replace(': string | undefined', ''),
    );
    const { stdout } = await run(process.execPath, [join(project, 'main.mjs'), home], { cwd: project });
    assert.deepEqual(JSON.parse(stdout), { vms: 0, code: 'NotFound', same: true });
    const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
    const flags = ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--types', 'node'];
    await run(process.execPath, [tsc, ...flags, '--typeRoots', join(repo, 'node_modules', '@types'), join(project, 'main.ts')], { cwd: project }).catch(
      (e: { stdout?: string }) => assert.fail(`the consumer does not type-check against dist/types:\n${e.stdout ?? String(e)}`),
    );
  });
});

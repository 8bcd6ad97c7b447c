/**
 * The daemon in-process on a temporary BANGER_HOME with real SQLite, reached through the real client over
 * its unix socket. Image builds are faked (they take minutes); everything else is real.
 */
import { GUEST_CONTRACT_VERSION } from '../../src/daemon/guest/init/contract.js';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerClient } from '../../src/client/client.js';
import { startDaemon, type RunningDaemon } from '../../src/daemon/daemon.js';
import type { ImageBuilder } from '../../src/daemon/services/image/service.js';
import { ErrorCode, type BangerError } from '../../src/errors/index.js';
import type { ProgressEvent } from '../../src/protocol/common.js';
import { DaemonMethods } from '../../src/protocol/daemon.js';
import { ImageMethods } from '../../src/protocol/image.js';
import { VmMethods } from '../../src/protocol/vm.js';
import { silentLogger } from '../../src/shared/logger.js';
import { Paths } from '../../src/shared/paths.js';
import { scratchDir } from '../helpers/scratch.js';

const home = scratchDir('banger-int-');
const paths = new Paths(home);
const dns = { listen: [{ host: '127.0.0.1', port: 0 }], hostsFile: join(home, 'hosts') };
let daemon: RunningDaemon;
let client: BangerClient;
let buildAborted = false;

/** A fake build: writes tiny files, or waits until cancelled for the image named 'slow'. */
const fakeBuild: ImageBuilder = async (req, outDir, progress, signal) => {
  progress({ kind: 'step', step: 'bootstrap rootfs', index: 1, total: 2 });
  if (req.name === 'slow') {
    await new Promise<void>((_, reject) =>
      signal?.addEventListener('abort', () => {
        buildAborted = true;
        reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      }),
    );
  }
  progress({ kind: 'step', step: 'checksum', index: 2, total: 2 });
  const files = (['kernel', 'initrd', 'rootfs'] as const).map((role) => {
    const path = join(outDir, role);
    writeFileSync(path, role);
    return { role, path, sizeBytes: role.length, sha256: '0'.repeat(64) };
  });
  return { kernelVersion: 'test', files, params: { suite: 'bookworm', mirror: 'test', packages: req.packages, guestContract: GUEST_CONTRACT_VERSION } };
};

const code = async (p: Promise<unknown>): Promise<BangerError> => {
  try {
    await p;
  } catch (e) {
    return e as BangerError;
  }
  throw new Error('expected a failure');
};

void describe('bangerd in-process', () => {
  before(async () => {
    // What a daemon killed in the middle of an import leaves behind.
    mkdirSync(join(paths.tmpDir, 'banger-import-left'), { recursive: true });
    writeFileSync(join(paths.tmpDir, 'banger-import-left', 'history.pack'), 'pack');
    daemon = await startDaemon({ paths, log: silentLogger(), build: fakeBuild, dns, onStopRequest: () => undefined });
    client = await BangerClient.connect(paths.socket);
  });
  after(async () => {
    client.close();
    await daemon.stop();
    rmSync(home, { recursive: true, force: true });
  });

  void it('keeps its state and socket closed to other users', () => {
    assert.equal(statSync(home).mode & 0o077, 0);
    assert.equal(statSync(paths.socket).mode & 0o777, 0o600);
    assert.equal(statSync(paths.database).mode & 0o077, 0);
    assert.equal(statSync(paths.sshPrivateKey).mode & 0o777, 0o600);
    assert.equal(statSync(paths.tmpDir).mode & 0o777, 0o700);
  });

  void it('removes the scratch files of a daemon killed before it could', () => {
    assert.deepEqual(readdirSync(paths.tmpDir), []);
  });

  void it('answers status and an empty VM list', async () => {
    const s = await client.call(DaemonMethods.status, undefined);
    assert.equal(s.home, home);
    assert.deepEqual(await client.call(VmMethods.list, undefined), []);
  });

  void it('maps errors with codes and hints through the socket', async () => {
    const nf = await code(client.call(VmMethods.show, { name: 'nope' }));
    assert.equal(nf.code, ErrorCode.NotFound);
    assert.match(nf.hint ?? '', /banger vm list/);
    const bad = await code(client.call(VmMethods.show, { name: 42 as unknown as string }));
    assert.equal(bad.code, ErrorCode.InvalidArgument);
    assert.match(bad.message, /name/);
    const badName = await code(client.call(VmMethods.create, { name: '../x' }));
    assert.equal(badName.code, ErrorCode.InvalidArgument);
    const noImage = await code(client.call(VmMethods.create, { name: 'a', image: 'missing' }));
    assert.equal(noImage.code, ErrorCode.NotFound);
    assert.match(noImage.hint ?? '', /banger image build missing/);
  });

  void it('builds an image with progress events and records it in SQLite', async () => {
    const events: ProgressEvent[] = [];
    const img = await client.call(ImageMethods.build, { name: 'tiny', packages: ['jq'] }, { onProgress: (e) => events.push(e) });
    assert.equal(img.status, 'ready');
    assert.deepEqual(img.params.packages, ['jq']);
    assert.deepEqual(
      events.filter((e) => e.kind === 'step').map((e) => (e.kind === 'step' ? e.step : '')),
      ['bootstrap rootfs', 'checksum'],
    );
    const list = await client.call(ImageMethods.list, undefined);
    assert.deepEqual(list.map((i) => i.name), ['tiny']);
    assert.equal(statSync(img.files[0]!.path).size, img.files[0]!.sizeBytes);
  });

  void it('cancelling a request stops its work and leaves nothing half-made', async () => {
    const ac = new AbortController();
    // Cancel once the build is under way (its first progress event), not at a guessed moment.
    let begun!: () => void;
    const started = new Promise<void>((r) => (begun = r));
    const p = client.call(ImageMethods.build, { name: 'slow' }, { signal: ac.signal, onProgress: () => begun() });
    await started;
    ac.abort();
    const err = await code(p);
    assert.equal(err.code, ErrorCode.Cancelled);
    for (let i = 0; i < 20 && !buildAborted; i++) await sleep(50);
    assert.ok(buildAborted, 'the build saw the abort');
    for (let i = 0; i < 20; i++) {
      if (!(await client.call(ImageMethods.list, undefined)).some((x) => x.name === 'slow')) break;
      await sleep(50);
    }
    assert.deepEqual((await client.call(ImageMethods.list, undefined)).map((i) => i.name), ['tiny']);
  });

  void it('vm.create with rm: the VM is deleted when its client disconnects; without rm it stays', async () => {
    const names = async () => (await client.call(VmMethods.list, undefined)).map((v) => v.name).sort();
    const owner = await BangerClient.connect(paths.socket);
    const made = await owner.call(VmMethods.create, { name: 'ephemeral', image: 'tiny', vmm: 'qemu', accel: 'tcg', rm: true });
    assert.equal(made.name, 'ephemeral');
    const keeper = await BangerClient.connect(paths.socket);
    await keeper.call(VmMethods.create, { name: 'kept', image: 'tiny', vmm: 'qemu', accel: 'tcg' });
    assert.deepEqual(await names(), ['ephemeral', 'kept']);

    owner.close();
    keeper.close();
    for (let i = 0; i < 100 && (await names()).includes('ephemeral'); i++) await sleep(50);
    assert.deepEqual(await names(), ['kept'], 'the rm VM is gone, the other one is not');
    assert.deepEqual((await client.call(ImageMethods.show, { name: 'tiny' })).usedBy, ['kept']);
    await client.call(VmMethods.delete, { name: 'kept' });
  });

  void it('vm.create results match the protocol result schema', async () => {
    const v = await client.call(VmMethods.create, { name: 'shaped', image: 'tiny', vmm: 'qemu', accel: 'tcg' });
    try {
      assert.deepEqual(VmMethods.create.result.parse(v), v);
      const s = await client.call(DaemonMethods.status, undefined);
      assert.deepEqual(DaemonMethods.status.result.parse(s), s);
      // A VM never started: what needs it running says so, and how to start it.
      const idle = await code(client.call(VmMethods.sshTarget, { name: 'shaped' }));
      assert.equal(idle.code, ErrorCode.FailedPrecondition);
      assert.equal(idle.message, "VM 'shaped' is not running: it has never been started");
      assert.match(idle.hint ?? '', /banger vm start shaped/);
    } finally {
      await client.call(VmMethods.delete, { name: 'shaped' });
    }
  });

  void it('a second daemon on the same state directory refuses to start, and the first keeps serving', async () => {
    const err = await code(startDaemon({ paths, log: silentLogger(), build: fakeBuild, dns, onStopRequest: () => undefined }));
    assert.equal(err.code, ErrorCode.Conflict);
    assert.match(err.message, /another bangerd is running on this state directory/);
    assert.deepEqual(await client.call(VmMethods.list, undefined), []);
  });

  void it('keeps its records across a restart', async () => {
    client.close();
    await daemon.stop();
    daemon = await startDaemon({ paths, log: silentLogger(), build: fakeBuild, dns, onStopRequest: () => undefined });
    client = await BangerClient.connect(paths.socket);
    assert.deepEqual((await client.call(ImageMethods.list, undefined)).map((i) => i.name), ['tiny']);
    await client.call(ImageMethods.delete, { name: 'tiny' });
    assert.deepEqual(await client.call(ImageMethods.list, undefined), []);
  });
});

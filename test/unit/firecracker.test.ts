import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { AgentClient } from '../../src/daemon/guest/agent-client.js';
import { AGENT_PROTOCOL_VERSION, AGENT_VSOCK_PORT } from '../../src/protocol/agent.js';
import type { LaunchSpec, VmHandle } from '../../src/daemon/vmm/driver.js';
import { processStartTime } from '../../src/daemon/vmm/process.js';
import { FirecrackerApi } from '../../src/daemon/vmm/firecracker/api.js';
import {
  INSTANCE_START,
  firecrackerArgv,
  firecrackerBootArgs,
  firecrackerLoadRequest,
  firecrackerRequests,
} from '../../src/daemon/vmm/firecracker/config.js';
import { FirecrackerDriver } from '../../src/daemon/vmm/firecracker/driver.js';
import { detectKernelFormat, elfKernelFor, extractVmlinux } from '../../src/daemon/vmm/vmlinux.js';
import { FIRECRACKER_SPEC_PATH, FirecrackerFake, FirecrackerSpec } from '../helpers/firecracker-fake.js';
import type { FakeBehaviour, FakeRecord } from '../helpers/fake-firecracker.js';
import { startAgent } from '../helpers/agent-harness.js';
import { guestKernelArgs } from '../../src/daemon/guest/init/cmdline.js';
import { launchVmm, type Boot, type BootDeps } from '../../src/daemon/services/vm/boot.js';
import type { ReadyImage } from '../../src/daemon/services/image/service.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import { Paths } from '../../src/shared/paths.js';
import { scratchDir } from '../helpers/scratch.js';

const FAKE_BIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'fake-firecracker.ts');
const ELF_HEAD = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]);

function baseSpec(dir: string, over: Partial<LaunchSpec> = {}): LaunchSpec {
  return {
    vmId: 'vm-0123abcd',
    name: 'dev',
    vcpus: 2,
    memoryMib: 512,
    accel: 'kvm',
    kernelPath: join(dir, 'vmlinux'),
    initrdPath: join(dir, 'initrd.img'),
    kernelCmdline: 'console=ttyS0 root=/dev/vda rw net.ifnames=0 quiet',
    disks: [
      { id: 'seed', path: join(dir, 'seed.tar'), format: 'raw', readOnly: true },
      { id: 'root', path: join(dir, 'root.ext4'), format: 'raw', readOnly: false },
      { id: 'work', path: join(dir, 'work.ext4'), format: 'raw', readOnly: false },
    ],
    network: { mode: 'tap', tapName: 'bgr-tap0', mac: '52:54:00:AB:CD:EF' },
    consoleLogPath: join(dir, 'console.log'),
    vmmLogPath: join(dir, 'vmm.log'),
    controlSocketPath: join(dir, 'fc.sock'),
    channelSocketPath: join(dir, 'vsock.sock'),
    ...over,
  };
}

/** A minimal bzImage: boot header with payload_offset/length pointing at `payload`. */
function fakeBzImage(payload: Buffer): Buffer {
  const setupSects = 4;
  const img = Buffer.alloc((setupSects + 1) * 512);
  img[0x1f1] = setupSects;
  img.write('HdrS', 0x202, 'latin1');
  img.writeUInt16LE(0x20f, 0x206);
  img.writeUInt32LE(0x10, 0x248);
  img.writeUInt32LE(payload.length, 0x24c);
  return Buffer.concat([img, Buffer.alloc(0x10), payload, Buffer.from('trailing bytes')]);
}

function assertBangerError(e: unknown, code: ErrorCode, pattern: RegExp): true {
  assert.ok(e instanceof BangerError, `expected a BangerError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  assert.match(e.message, pattern);
  return true;
}

const spec = new FirecrackerSpec();

void describe('firecracker config builders', () => {
  void it('builds the pre-boot requests in order', () => {
    const s = baseSpec('/v');
    assert.deepEqual(firecrackerRequests(s), [
      { method: 'PUT', path: '/machine-config', body: { vcpu_count: 2, mem_size_mib: 512, smt: false } },
      {
        method: 'PUT',
        path: '/boot-source',
        body: {
          kernel_image_path: '/v/vmlinux',
          initrd_path: '/v/initrd.img',
          boot_args: 'console=ttyS0 root=/dev/vda rw net.ifnames=0 quiet reboot=k panic=1',
        },
      },
      { method: 'PUT', path: '/serial', body: { serial_out_path: '/v/console.log' } },
      {
        method: 'PUT',
        path: '/drives/root',
        body: { drive_id: 'root', path_on_host: '/v/root.ext4', is_root_device: true, is_read_only: false },
      },
      {
        method: 'PUT',
        path: '/drives/work',
        body: { drive_id: 'work', path_on_host: '/v/work.ext4', is_root_device: false, is_read_only: false },
      },
      {
        method: 'PUT',
        path: '/drives/seed',
        body: { drive_id: 'seed', path_on_host: '/v/seed.tar', is_root_device: false, is_read_only: true },
      },
      {
        method: 'PUT',
        path: '/network-interfaces/eth0',
        body: { iface_id: 'eth0', host_dev_name: 'bgr-tap0', guest_mac: '52:54:00:ab:cd:ef' },
      },
      { method: 'PUT', path: '/vsock', body: { guest_cid: 3, uds_path: '/v/vsock.sock' } },
    ]);
    assert.deepEqual(INSTANCE_START, { method: 'PUT', path: '/actions', body: { action_type: 'InstanceStart' } });
  });

  void it('omits vsock without a channel socket and initrd_path without an initrd', () => {
    const reqs = firecrackerRequests(baseSpec('/v', { channelSocketPath: undefined, initrdPath: '' }));
    assert.ok(!reqs.some((r) => r.path === '/vsock'));
    const boot = reqs.find((r) => r.path === '/boot-source')!;
    assert.ok(!('initrd_path' in boot.body));
  });

  void it('every request it builds validates against the Firecracker spec', () => {
    for (const r of [...firecrackerRequests(baseSpec('/v')), INSTANCE_START]) {
      const v = spec.validate(r.method, r.path, r.body);
      assert.ok(v.ok, `${r.method} ${r.path}: ${v.ok ? '' : v.error}`);
    }
  });

  void it('adds only the boot args the command line lacks', () => {
    assert.equal(firecrackerBootArgs('root=/dev/vda'), 'root=/dev/vda console=ttyS0 reboot=k panic=1');
    assert.equal(firecrackerBootArgs('  console=ttyS0  panic=-1 '), 'console=ttyS0 panic=-1 reboot=k');
  });

  void it('passes the API socket and the VM id on the command line', () => {
    assert.deepEqual(firecrackerArgv({ vmId: 'vm-1', controlSocketPath: '/v/fc.sock' }), [
      '--api-sock',
      '/v/fc.sock',
      '--id',
      'vm-1',
    ]);
    assert.throws(
      () => firecrackerArgv({ vmId: 'vm_1/x', controlSocketPath: '/s' }),
      (e) => assertBangerError(e, ErrorCode.InvalidArgument, /Firecracker instance id/),
    );
  });

  void it('refuses a qcow2 disk', () => {
    const s = baseSpec('/v');
    s.disks[1] = { id: 'root', path: '/v/root.qcow2', format: 'qcow2', readOnly: false };
    assert.throws(
      () => firecrackerRequests(s),
      (e) => {
        assertBangerError(e, ErrorCode.FailedPrecondition, /Firecracker cannot read qcow2 disks: disk 'root'/);
        assert.match((e as BangerError).hint ?? '', /raw/);
        return true;
      },
    );
  });

  void it('refuses user networking', () => {
    const s = baseSpec('/v', {
      network: { mode: 'user', hostAddress: '127.0.0.1', sshHostPort: 2222, egress: false, mac: '52:54:00:00:00:01' },
    });
    assert.throws(
      () => firecrackerRequests(s),
      (e) => assertBangerError(e, ErrorCode.FailedPrecondition, /Firecracker needs tap networking/),
    );
  });

  void it('refuses TCG, bad vCPU counts, a missing root disk and a bad MAC', () => {
    assert.throws(
      () => firecrackerRequests(baseSpec('/v', { accel: 'tcg' })),
      (e) => assertBangerError(e, ErrorCode.FailedPrecondition, /needs KVM/),
    );
    assert.throws(
      () => firecrackerRequests(baseSpec('/v', { vcpus: 33 })),
      (e) => assertBangerError(e, ErrorCode.InvalidArgument, /1 to 32 vCPUs/),
    );
    const noRoot = baseSpec('/v');
    noRoot.disks = noRoot.disks.filter((d) => d.id !== 'root');
    assert.throws(
      () => firecrackerRequests(noRoot),
      (e) => assertBangerError(e, ErrorCode.InvalidArgument, /root disk/),
    );
    assert.throws(
      () => firecrackerRequests(baseSpec('/v', { network: { mode: 'tap', tapName: 't0', mac: 'nope' } })),
      (e) => assertBangerError(e, ErrorCode.InvalidArgument, /MAC/),
    );
  });
});

void describe('the spec-validating fake', () => {
  void it('reads the spec vendored in this repository, with its Apache-2.0 notice beside it', () => {
    const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
    assert.equal(FIRECRACKER_SPEC_PATH, join(repo, 'test', 'fixtures', 'firecracker', 'firecracker.yaml'));
    assert.ok(existsSync(FIRECRACKER_SPEC_PATH), 'a clone with nothing beside it has the spec');
    const notice = readFileSync(join(dirname(FIRECRACKER_SPEC_PATH), 'NOTICE'), 'utf8');
    assert.match(notice, /Apache-2\.0/);
    assert.match(
      readFileSync(join(dirname(FIRECRACKER_SPEC_PATH), 'LICENSE'), 'utf8'),
      /Apache License\s+Version 2\.0/,
    );
    assert.match(readFileSync(FIRECRACKER_SPEC_PATH, 'utf8'), /^swagger: "2\.0"/);
  });
  void it('rejects what Firecracker would reject', () => {
    const cases: [string, string, unknown, RegExp][] = [
      ['PUT', '/machine-config', { vcpu_count: '2', mem_size_mib: 512 }, /vcpu_count must be integer/],
      ['PUT', '/machine-config', { vcpu_count: 64, mem_size_mib: 512 }, /must be <= 32/],
      ['PUT', '/machine-config', { vcpu_count: 2 }, /mem_size_mib/],
      [
        'PUT',
        '/drives/root',
        { drive_id: 'root', is_root_device: true, path_on_host: '/x', readonly: true },
        /additional properties/,
      ],
      ['PUT', '/vsock', { guest_cid: 2, uds_path: '/x' }, /must be >= 3/],
      ['PUT', '/actions', { action_type: 'Reboot' }, /allowed values/],
      ['PUT', '/boot-source', undefined, /missing request body/],
      ['PUT', '/no-such-endpoint', {}, /not in the API spec/],
      ['DELETE', '/drives/root', undefined, /Invalid request method/],
    ];
    for (const [method, path, body, pattern] of cases) {
      const v = spec.validate(method, path, body);
      assert.equal(v.ok, false, `${method} ${path} should be invalid`);
      if (!v.ok) assert.match(v.error, pattern);
    }
    assert.ok(spec.validate('GET', '/', undefined).ok);
    assert.ok(
      spec.validate('PUT', '/drives/x', {
        drive_id: 'x',
        is_root_device: false,
        path_on_host: '/x',
        is_read_only: true,
      }).ok,
    );
  });

  void describe('over HTTP', () => {
    let dir: string;
    let fake: FirecrackerFake;
    before(async () => {
      dir = scratchDir('banger-fc-');
      fake = await FirecrackerFake.listen({ socketPath: join(dir, 'api.sock'), id: 'vm-x' });
    });
    after(async () => {
      await fake.close();
      await rm(dir, { recursive: true, force: true });
    });

    void it('answers an invalid body with a 400 fault and records it', async () => {
      const api = new FirecrackerApi(join(dir, 'api.sock'));
      await assert.rejects(api.call('PUT', '/machine-config', { vcpu_count: 'two', mem_size_mib: 128 }), (e) =>
        assertBangerError(e, ErrorCode.FailedPrecondition, /PUT \/machine-config failed: .*vcpu_count must be integer/),
      );
      await assert.rejects(
        api.call('PUT', '/drives/root', { drive_id: 'other', is_root_device: true }),
        /does not match/,
      );
      assert.equal(fake.invalid.length, 2);
      assert.equal(fake.accepted.length, 0);
    });

    void it('refuses InstanceStart before a boot source, and surfaces an injected fault', async () => {
      const api = new FirecrackerApi(join(dir, 'api.sock'));
      assert.equal((await api.describeInstance()).state, 'Not started');
      await assert.rejects(
        api.send(INSTANCE_START),
        /PUT \/actions failed: Cannot start microvm without kernel configuration/,
      );
      fake.injectFault('PUT /boot-source', 'Invalid kernel path');
      await assert.rejects(
        api.send({ method: 'PUT', path: '/boot-source', body: { kernel_image_path: '/nope' } }),
        (e) =>
          assertBangerError(
            e,
            ErrorCode.FailedPrecondition,
            /^firecracker PUT \/boot-source failed: Invalid kernel path$/,
          ),
      );
    });
  });
});

void describe('FirecrackerDriver against the fake firecracker process', () => {
  let dir: string;
  let binDir: string;
  const handles: VmHandle[] = [];

  before(async () => {
    dir = scratchDir('banger-fcd-');
    binDir = join(dir, 'bin');
    await writeFile(join(dir, 'vmlinux'), Buffer.concat([ELF_HEAD, Buffer.alloc(1024)]));
    await writeFile(join(dir, 'initrd.img'), 'initrd');
    for (const f of ['root.ext4', 'work.ext4', 'seed.tar']) await writeFile(join(dir, f), Buffer.alloc(4096));
  });
  after(async () => {
    const d = new FirecrackerDriver();
    for (const h of handles) await d.kill(h, 0);
    await rm(dir, { recursive: true, force: true });
  });

  let n = 0;
  /** A driver running the fake as its firecracker, and a fresh VM directory. */
  async function setup(behaviour: FakeBehaviour = {}) {
    const vmDir = await mkdtemp(join(dir, `vm${n++}-`));
    const record = join(vmDir, 'record.json');
    const kvm = join(dir, 'kvm');
    await writeFile(kvm, '');
    const driver = new FirecrackerDriver({
      binary: process.execPath,
      binaryArgs: ['--import', import.meta.resolve('tsx'), FAKE_BIN],
      env: { ...process.env, FAKE_FIRECRACKER: JSON.stringify({ record, ...behaviour }) },
      kvmDevice: kvm,
      apiReadyTimeoutMs: 10_000,
    });
    const s = baseSpec(dir, {
      consoleLogPath: join(vmDir, 'console.log'),
      vmmLogPath: join(vmDir, 'vmm.log'),
      controlSocketPath: join(vmDir, 'fc.sock'),
      channelSocketPath: join(vmDir, 'vsock.sock'),
    });
    // The fake records a request after it has answered it: wait until the record has settled.
    const readRecord = async () => {
      let last = '';
      for (let i = 0; i < 40; i++) {
        const text = await readFile(record, 'utf8').catch(() => '');
        if (text !== '' && text === last) break;
        last = text;
        await new Promise((r) => setTimeout(r, 50));
      }
      return JSON.parse(last) as FakeRecord;
    };
    return { driver, spec: s, vmDir, readRecord };
  }

  void it('launches: every request is valid, in order, then InstanceStart; the process is alive and detached', async () => {
    const { driver, spec: s, readRecord } = await setup();
    const h = await driver.launch(s);
    handles.push(h);
    assert.equal(h.vmm, 'firecracker');
    assert.equal(h.accel, 'kvm');
    assert.equal(h.controlSocketPath, s.controlSocketPath);
    assert.equal(h.startTime, await processStartTime(h.pid));

    const rec = await readRecord();
    assert.deepEqual(rec.invalid, []);
    assert.deepEqual(
      rec.accepted.map((r) => `${r.method} ${r.path}`),
      [
        'GET /',
        'PUT /machine-config',
        'PUT /boot-source',
        'PUT /serial',
        'PUT /drives/root',
        'PUT /drives/work',
        'PUT /drives/seed',
        'PUT /network-interfaces/eth0',
        'PUT /vsock',
        'PUT /actions',
      ],
    );
    assert.ok(rec.accepted.every((r) => r.status === 204 || r.status === 200));
    assert.deepEqual(rec.accepted.at(-1)!.body, { action_type: 'InstanceStart' });
    assert.equal(rec.state, 'Running');
    assert.deepEqual(rec.argv.slice(-4), ['--api-sock', s.controlSocketPath, '--id', s.vmId]);
    assert.match(await readFile(s.consoleLogPath, 'utf8'), /fake guest: booting/);

    // Its own session (detached), so a daemon's death does not take it along.
    const stat = await readFile(`/proc/${h.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    assert.equal(Number(fields[3]), h.pid, 'session id (field 6) is its own pid');

    assert.equal(await driver.isAlive(h, s.vmId), true);
    assert.equal(await driver.isAlive(h, 'vm-someone-else'), false);
    assert.equal(await driver.isAlive({ ...h, startTime: h.startTime + 1 }, s.vmId), false);
  });

  void it("a VM's launch step starts Firecracker with the vmlinux from the image's bzImage, its raw disks, its tap and its vsock", async () => {
    const { driver, vmDir, readRecord } = await setup();
    const imageDir = join(vmDir, 'image');
    await mkdir(imageDir);
    const elf = Buffer.concat([ELF_HEAD, Buffer.alloc(4096, 1)]);
    await writeFile(join(imageDir, 'vmlinuz'), fakeBzImage(gzipSync(elf)));
    await writeFile(join(imageDir, 'initrd.img'), 'initrd');
    const vp = new Paths(join(vmDir, 'home')).vm('0123456789ab');
    await mkdir(vp.dir, { recursive: true });
    for (const f of [vp.rootDiskRaw, vp.workDisk, vp.seedDisk]) await writeFile(f, Buffer.alloc(4096));
    const vm = { id: '0123456789ab', name: 'fc-dev', vcpus: 2, memoryMib: 512, mac: '52:54:00:12:34:56', networkMode: 'tap', agent: true } as unknown as VmRecord;
    const updates: unknown[] = [];
    const added: string[] = [];
    const b: Boot = {
      vm,
      image: { kernelPath: join(imageDir, 'vmlinuz'), initrdPath: join(imageDir, 'initrd.img') } as ReadyImage,
      driver,
      vp,
      progress: () => undefined,
      deadline: Date.now() + 60_000,
      accel: 'kvm',
      net: { ipCidr: '172.30.0.2/24', gateway: '172.30.0.1', dns: '172.30.0.1', tapName: 'bgr-t0123' },
    };
    const d = {
      kernelCmdline: () => guestKernelArgs().join(' '),
      live: { add: (id: string) => void added.push(id) },
      vms: { update: (_id: string, patch: object) => (updates.push(patch), { ...vm, ...patch }) },
      now: () => new Date(),
    } as unknown as BootDeps;
    await launchVmm(b, d);
    handles.push(b.live!.handle);

    const rec = await readRecord();
    assert.deepEqual(rec.invalid, [], 'every request valid against the spec');
    const body = (path: string) => rec.accepted.find((r) => r.path === path)?.body as Record<string, unknown>;
    assert.equal(body('/boot-source').kernel_image_path, join(imageDir, 'vmlinux'));
    assert.equal(detectKernelFormat(await readFile(join(imageDir, 'vmlinux'))), 'elf');
    assert.match(String(body('/boot-source').boot_args), /root=\/dev\/vda/);
    assert.equal(body('/drives/root').is_read_only, false);
    assert.equal(body('/drives/seed').is_read_only, true);
    assert.equal(body('/network-interfaces/eth0').host_dev_name, 'bgr-t0123');
    assert.equal(body('/network-interfaces/eth0').guest_mac, '52:54:00:12:34:56');
    assert.ok(body('/vsock'), 'a vsock device for the guest agent');
    assert.deepEqual(
      [...rec.opened].sort(),
      [vp.rootDiskRaw, vp.workDisk, vp.seedDisk].sort(),
      "the VM's own raw disks",
    );
    assert.equal(rec.state, 'Running');
    assert.deepEqual(added, [vm.id]);
    assert.equal(JSON.parse(await readFile(vp.handles, 'utf8')).vmm, 'firecracker', 'the process is recorded');
  });

  void it('requestShutdown sends Ctrl-Alt-Del and waitExit resolves when the VMM exits', async () => {
    const { driver, spec: s, readRecord } = await setup();
    const h = await driver.launch(s);
    handles.push(h);
    await driver.requestShutdown(h);
    await driver.waitExit(h, AbortSignal.timeout(10_000));
    assert.equal(await driver.isAlive(h, s.vmId), false);
    const rec = await readRecord();
    assert.deepEqual(rec.invalid, []);
    assert.deepEqual(rec.accepted.at(-1)!.body, { action_type: 'SendCtrlAltDel' });
    assert.match(await readFile(s.consoleLogPath, 'utf8'), /Restarting system/);
  });

  void it('pausing: PATCH /vm Paused, then Resumed, both valid against the spec; the instance says so', async () => {
    const { driver, spec: s, readRecord } = await setup();
    const h = await driver.launch(s);
    handles.push(h);
    const api = new FirecrackerApi(s.controlSocketPath);
    await driver.pausing.pause(h);
    assert.equal((await api.describeInstance()).state, 'Paused');
    await driver.pausing.resume(h);
    assert.equal((await api.describeInstance()).state, 'Running');
    const rec = await readRecord();
    assert.deepEqual(rec.invalid, []);
    assert.deepEqual(
      rec.accepted.filter((r) => r.method === 'PATCH').map((r) => r.body),
      [{ state: 'Paused' }, { state: 'Resumed' }],
    );
  });

  void it('kill ends it with SIGTERM, and escalates to SIGKILL when SIGTERM is ignored', async () => {
    const a = await setup();
    const h1 = await a.driver.launch(a.spec);
    handles.push(h1);
    await a.driver.kill(h1, 5000);
    assert.equal(await a.driver.isAlive(h1, a.spec.vmId), false);

    const b = await setup({ ignoreSigterm: true });
    const h2 = await b.driver.launch(b.spec);
    handles.push(h2);
    await b.driver.kill(h2, 300);
    assert.equal(await b.driver.isAlive(h2, b.spec.vmId), false);
    // A second kill of a gone process is a no-op.
    await b.driver.kill(h2, 100);
  });

  void it('a waitExit aborted by its signal rejects', async () => {
    const { driver, spec: s } = await setup();
    const h = await driver.launch(s);
    handles.push(h);
    await assert.rejects(driver.waitExit(h, AbortSignal.timeout(100)));
    await driver.kill(h, 1000);
  });

  void it('an API fault rejects launch with the endpoint and fault message, and kills the process', async () => {
    const {
      driver,
      spec: s,
      readRecord,
    } = await setup({ faults: { 'PUT /drives/work': 'Unable to open the block device backing file' } });
    await assert.rejects(driver.launch(s), (e) => {
      assertBangerError(
        e,
        ErrorCode.FailedPrecondition,
        /PUT \/drives\/work failed: Unable to open the block device backing file/,
      );
      assert.match((e as BangerError).hint ?? '', /vmm\.log/);
      return true;
    });
    const rec = await readRecord();
    assert.deepEqual(rec.invalid, []);
    assert.ok(!rec.accepted.some((r) => r.path === '/actions'), 'InstanceStart was not sent');
    assert.equal(await processStartTime(rec.pid), undefined, 'the fake firecracker was killed');
    assert.equal(existsSync(s.controlSocketPath), false);
  });

  void it('an early exit rejects with the VMM output', async () => {
    const { driver, spec: s } = await setup({ exitEarly: 'Error: Invalid value for --id' });
    await assert.rejects(driver.launch(s), (e) =>
      assertBangerError(
        e,
        ErrorCode.FailedPrecondition,
        /Firecracker exited during launch \(exit code 1\):\nError: Invalid value for --id/,
      ),
    );
  });

  void it('snapshots: Full, of the paused guest, disks copied while paused; a restore elsewhere loads it with one request and opens its own disks, tap and vsock', async () => {
    /** A VM directory with its own disks (their contents name it) and a spec that runs Firecracker there. */
    const vmIn = async (vmDir: string, tap: string, over: Partial<LaunchSpec> = {}): Promise<LaunchSpec> => {
      for (const f of ['root.img', 'work.img', 'seed.img']) await writeFile(join(vmDir, f), `${f} of ${vmDir}`);
      return baseSpec(dir, {
        disks: [
          { id: 'root', path: join(vmDir, 'root.img'), format: 'raw', readOnly: false },
          { id: 'work', path: join(vmDir, 'work.img'), format: 'raw', readOnly: false },
          { id: 'seed', path: join(vmDir, 'seed.img'), format: 'raw', readOnly: true },
        ],
        network: { mode: 'tap', tapName: tap, mac: '52:54:00:AB:CD:EF' },
        consoleLogPath: join(vmDir, 'console.log'),
        vmmLogPath: join(vmDir, 'vmm.log'),
        controlSocketPath: join(vmDir, 'fc.sock'),
        channelSocketPath: join(vmDir, 'vsock.sock'),
        workDir: vmDir,
        ...over,
      });
    };
    const a = await setup();
    const specA = await vmIn(a.vmDir, 'bgr-tap0');
    const hA = await a.driver.launch(specA);
    handles.push(hA);
    let rec = await a.readRecord();
    // Firecracker runs in the VM's directory and is given its files by name: a saved state names no directory.
    assert.equal(rec.cwd, a.vmDir);
    const drives = rec.accepted.filter((r) => r.path.startsWith('/drives/')).map((r) => (r.body as { path_on_host: string }).path_on_host);
    assert.deepEqual(drives, ['root.img', 'work.img', 'seed.img']);
    assert.deepEqual(rec.opened, [join(a.vmDir, 'root.img'), join(a.vmDir, 'work.img'), join(a.vmDir, 'seed.img')]);

    const snap = await mkdtemp(join(dir, 'snap-'));
    const api = new FirecrackerApi(specA.controlSocketPath);
    let stateWhileCopying = '';
    const saved = await a.driver.snapshots.save(hA, {
      disks: [],
      statePath: join(snap, 'state.bin'),
      ramPath: join(snap, 'memory.ram'),
      whilePaused: async () => {
        stateWhileCopying = (await api.describeInstance()).state;
        for (const f of ['root.img', 'work.img']) await writeFile(join(snap, f), await readFile(join(a.vmDir, f)));
      },
    });
    assert.equal(saved.ram, 'file');
    assert.equal(stateWhileCopying, 'Paused');
    assert.equal((await api.describeInstance()).state, 'Running', 'the source runs on');
    rec = await a.readRecord();
    assert.deepEqual(rec.invalid, []);
    assert.deepEqual(
      rec.accepted.filter((r) => r.method !== 'GET').slice(-3).map((r) => [`${r.method} ${r.path}`, r.body]),
      [
        ['PATCH /vm', { state: 'Paused' }],
        ['PUT /snapshot/create', { snapshot_type: 'Full', snapshot_path: join(snap, 'state.bin'), mem_file_path: join(snap, 'memory.ram') }],
        ['PATCH /vm', { state: 'Resumed' }],
      ],
    );
    await assert.rejects(
      a.driver.snapshots.save(hA, { disks: [{ id: 'root', overlayPath: '/x.qcow2' }], statePath: '/s', ramPath: '/m' }),
      /cannot move a running guest onto new disk layers/,
    );

    // The restored VM: another directory with copies of the snapshot's disks, another tap and vsock socket.
    const b = await setup();
    const specB = await vmIn(b.vmDir, 'bgr-tap1', {
      incoming: { statePath: join(snap, 'state.bin'), ramPath: join(snap, 'memory.ram'), ram: 'file' },
    });
    const hB = await b.driver.launch(specB);
    handles.push(hB);
    await b.driver.snapshots.waitRestored(hB, Date.now() + 10_000);
    const recB = await b.readRecord();
    assert.deepEqual(recB.invalid, []);
    assert.deepEqual(recB.accepted.filter((r) => r.method !== 'GET').map((r) => [`${r.method} ${r.path}`, r.body]), [
      [
        'PUT /snapshot/load',
        {
          snapshot_path: join(snap, 'state.bin'),
          mem_backend: { backend_type: 'File', backend_path: join(snap, 'memory.ram') },
          resume_vm: true,
          network_overrides: [{ iface_id: 'eth0', host_dev_name: 'bgr-tap1' }],
          vsock_override: { uds_path: join(b.vmDir, 'vsock.sock') },
        },
      ],
    ]);
    assert.equal(recB.state, 'Running');
    assert.deepEqual(recB.opened, [join(b.vmDir, 'root.img'), join(b.vmDir, 'work.img'), join(b.vmDir, 'seed.img')], 'its own disks, not the source VM\'s');

    // A state whose memory is in its stream (QEMU's) cannot be loaded: refused before any process starts.
    assert.throws(() => firecrackerLoadRequest({ ...specB, incoming: { statePath: '/s', ramPath: '', ram: 'stream' } }), /restores memory from a file/);
  });

  void it('removes a stale API socket before starting', async () => {
    const { driver, spec: s } = await setup();
    await writeFile(s.controlSocketPath, 'stale');
    const h = await driver.launch(s);
    handles.push(h);
    await driver.kill(h, 1000);
  });

  void it('the guest agent answers through the vsock device launch configured (CONNECT to the agent port)', async () => {
    const agent = await startAgent();
    try {
      const { driver, spec: s, readRecord } = await setup({ vsockGuests: { [AGENT_VSOCK_PORT]: agent.path } });
      const uds = s.channelSocketPath!;
      // A leftover of an earlier run: Firecracker cannot bind the vsock socket over it, so launch removes it.
      await writeFile(uds, 'stale');
      const h = await driver.launch(s);
      handles.push(h);
      const rec = await readRecord();
      assert.deepEqual(rec.invalid, []);
      assert.deepEqual(rec.accepted.find((r) => r.path === '/vsock')?.body, { guest_cid: 3, uds_path: uds });

      const client = new AgentClient(await driver.connectAgent(uds, { timeoutMs: 5000 }));
      try {
        assert.equal((await client.hello({ timeoutMs: 5000 })).protocol, AGENT_PROTOCOL_VERSION);
      } finally {
        client.close();
      }
      await driver.kill(h, 1000);
    } finally {
      await agent.close();
    }
  });

  void it('connectAgent is Unavailable while no agent listens in the guest', async () => {
    const { driver, spec: s } = await setup();
    const h = await driver.launch(s);
    handles.push(h);
    await assert.rejects(driver.connectAgent(s.channelSocketPath!, { timeoutMs: 5000 }), (e) =>
      assertBangerError(e, ErrorCode.Unavailable, /vsock port 1024 .*nothing in the guest accepted on that port/),
    );
    await driver.kill(h, 1000);
  });

  void it('refuses a bzImage kernel and a qcow2 file posing as raw before starting anything', async () => {
    const { driver, spec: s, vmDir } = await setup();
    const bz = Buffer.alloc(0x300);
    bz.write('HdrS', 0x202, 'latin1');
    await writeFile(join(vmDir, 'vmlinuz'), bz);
    await assert.rejects(driver.launch({ ...s, kernelPath: join(vmDir, 'vmlinuz') }), (e) => {
      assertBangerError(
        e,
        ErrorCode.FailedPrecondition,
        /compressed bzImage; Firecracker boots only an uncompressed ELF vmlinux/,
      );
      assert.match((e as BangerError).hint ?? '', /extract-vmlinux/);
      return true;
    });
    await writeFile(join(vmDir, 'fake.ext4'), Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
    const disks = s.disks.map((d) => (d.id === 'work' ? { ...d, path: join(vmDir, 'fake.ext4') } : d));
    await assert.rejects(driver.launch({ ...s, disks }), /disk 'work' .* is a qcow2 file/);
    assert.equal(existsSync(s.vmmLogPath), false, 'no process was started');
  });

  void it('availability names what is missing and how to fix it', async () => {
    const kvm = join(dir, 'kvm');
    await writeFile(kvm, '');
    const missing = await new FirecrackerDriver({ env: { PATH: binDir }, kvmDevice: kvm }).availability();
    assert.equal(missing.ok, false);
    assert.match(missing.reason ?? '', /firecracker was not found on PATH: install a Firecracker release/);

    await mkdir(binDir, { recursive: true });
    await writeFile(join(binDir, 'firecracker'), '#!/bin/sh\n');
    await chmod(join(binDir, 'firecracker'), 0o755);
    const ok = await new FirecrackerDriver({ env: { PATH: binDir }, kvmDevice: kvm }).availability();
    assert.deepEqual(ok, { ok: true, binary: join(binDir, 'firecracker') });

    const noKvm = await new FirecrackerDriver({ env: { PATH: binDir }, kvmDevice: join(dir, 'no-kvm') }).availability();
    assert.equal(noKvm.ok, false);
    assert.match(noKvm.reason ?? '', /does not exist: Firecracker needs KVM/);
  });

  void it('declares tap and vsock, not qcow2, user networking or TCG', () => {
    const f = new FirecrackerDriver().features;
    assert.deepEqual([...f].sort(), ['tap', 'vsock']);
  });
});

void describe('vmlinux extraction', () => {
  let dir: string;
  before(async () => {
    dir = scratchDir('banger-vmlinux-');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const elf = Buffer.concat([ELF_HEAD, Buffer.from('kernel text '.repeat(100))]);

  void it('detects kernel formats', () => {
    assert.equal(detectKernelFormat(elf), 'elf');
    assert.equal(detectKernelFormat(fakeBzImage(Buffer.alloc(8))), 'bzImage');
    assert.equal(detectKernelFormat(Buffer.alloc(0x300)), 'unknown');
  });

  void it('extracts a gzip payload with node:zlib', async () => {
    await writeFile(join(dir, 'bz-gzip'), fakeBzImage(gzipSync(elf)));
    const res = await extractVmlinux(join(dir, 'bz-gzip'), join(dir, 'out-gzip'));
    assert.deepEqual(res, { compression: 'gzip', size: elf.length });
    assert.deepEqual(await readFile(join(dir, 'out-gzip')), elf);
  });

  for (const [tool, args, compression] of [
    ['xz', ['--check=crc32', '-c'], 'xz'],
    ['zstd', ['-q', '-c'], 'zstd'],
    ['lz4', ['-l', '-c'], 'lz4'],
  ] as const) {
    const have = (() => {
      try {
        execFileSync('sh', ['-c', `command -v ${tool}`]);
        return true;
      } catch {
        return false;
      }
    })();
    void it(
      `extracts a ${compression} payload with the host's ${tool}`,
      { skip: have ? false : `${tool} is not installed` },
      async () => {
        const payload = execFileSync(tool, [...args], { input: elf });
        await writeFile(join(dir, `bz-${compression}`), fakeBzImage(payload));
        const res = await extractVmlinux(join(dir, `bz-${compression}`), join(dir, `out-${compression}`));
        assert.equal(res.compression, compression);
        assert.deepEqual(await readFile(join(dir, `out-${compression}`)), elf);
      },
    );
  }

  void it('a VMM that boots only an ELF kernel gets the vmlinux extracted beside the bzImage, once', async () => {
    const imageDir = join(dir, 'image-1');
    await mkdir(imageDir);
    const vmlinuz = join(imageDir, 'vmlinuz');
    await writeFile(vmlinuz, fakeBzImage(gzipSync(elf)));
    const first = await elfKernelFor(vmlinuz);
    assert.equal(first, join(imageDir, 'vmlinux'));
    assert.deepEqual(await readFile(first), elf);
    const made = statSync(first);
    assert.equal(await elfKernelFor(vmlinuz), first);
    assert.equal(statSync(first).mtimeMs, made.mtimeMs, 'not extracted again');
    assert.deepEqual(readdirSync(imageDir).sort(), ['vmlinux', 'vmlinuz'], 'no temporary file left');
    // An ELF kernel is booted as it is.
    assert.equal(await elfKernelFor(first), first);
  });

  void it('fails cleanly on a bzImage without a kernel inside, leaving no output', async () => {
    await writeFile(join(dir, 'bz-empty'), fakeBzImage(Buffer.from('not compressed')));
    await assert.rejects(
      extractVmlinux(join(dir, 'bz-empty'), join(dir, 'out-empty')),
      /no ELF kernel could be extracted/,
    );
    assert.equal(existsSync(join(dir, 'out-empty')), false);
  });
  // Extraction from a real Debian bzImage, and a boot of what it gives: test/integration/vmlinux.test.ts.
});

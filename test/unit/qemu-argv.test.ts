import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/errors/index.js';
import type { LaunchSpec } from '../../src/daemon/vmm/driver.js';
import { qemuArgv, qemuMachineArgs, qemuNameOption, qemuOptValue } from '../../src/daemon/vmm/qemu/argv.js';

const base: LaunchSpec = {
  vmId: 'v1',
  name: 'dev',
  vcpus: 2,
  memoryMib: 1024,
  accel: 'tcg',
  kernelPath: '/img/vmlinuz',
  initrdPath: '/img/initrd',
  kernelCmdline: 'console=ttyS0 root=/dev/vda rw',
  disks: [
    { id: 'root', path: '/vms/v1/root.qcow2', format: 'qcow2', readOnly: false },
    { id: 'work', path: '/vms/v1/work.ext4', format: 'raw', readOnly: false },
    { id: 'seed', path: '/vms/v1/seed.tar', format: 'raw', readOnly: true },
  ],
  network: { mode: 'user', hostAddress: '127.0.0.1', sshHostPort: 2222, egress: false, mac: '52:54:00:aa:bb:cc' },
  consoleLogPath: '/vms/v1/console.log',
  vmmLogPath: '/vms/v1/vmm.log',
  controlSocketPath: '/vms/v1/qmp.sock',
};

void test('qemuArgv: the full command line of a TCG VM with user networking', () => {
  // prettier-ignore
  assert.deepEqual(qemuArgv(base), [
    '-name', 'guest=banger-v1,process=banger-v1',
    '-M', 'microvm,x-option-roms=off,rtc=on',
    '-accel', 'tcg',
    '-cpu', 'max,-erms,-fsrm',
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-no-reboot',
    '-smp', '2',
    '-m', '1024',
    '-object', 'memory-backend-memfd,id=ram0,size=1024M,share=on',
    '-machine', 'memory-backend=ram0',
    '-msg', 'timestamp=on',
    '-chardev', 'file,id=con0,path=/vms/v1/console.log,append=on',
    '-serial', 'chardev:con0',
    '-chardev', 'socket,id=qmp0,path=/vms/v1/qmp.sock,server=on,wait=off',
    '-mon', 'chardev=qmp0,mode=control',
    '-kernel', '/img/vmlinuz',
    '-initrd', '/img/initrd',
    '-append', 'console=ttyS0 root=/dev/vda rw',
    '-drive', 'id=root,file=/vms/v1/root.qcow2,format=qcow2,if=none,cache=writeback,aio=threads,discard=unmap',
    '-device', 'virtio-blk-device,drive=root,serial=banger-root',
    '-drive', 'id=work,file=/vms/v1/work.ext4,format=raw,if=none,cache=writeback,aio=threads,discard=unmap',
    '-device', 'virtio-blk-device,drive=work,serial=banger-work',
    '-drive', 'id=seed,file=/vms/v1/seed.tar,format=raw,if=none,cache=writeback,aio=threads,discard=unmap,readonly=on',
    '-device', 'virtio-blk-device,drive=seed,serial=banger-seed',
    '-netdev', 'user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22',
    '-device', 'virtio-net-device,netdev=n0,mac=52:54:00:aa:bb:cc',
  ]);
});

void test('qemuArgv: disks appear in spec order (microvm gives virtio-mmio slots in argv order: vda, vdb, vdc)', () => {
  const argv = qemuArgv(base);
  const drives = argv.filter((_, i) => argv[i - 1] === '-drive').map((d) => d.split(',')[0]);
  assert.deepEqual(drives, ['id=root', 'id=work', 'id=seed']);
  const devices = argv.filter((a) => a.startsWith('virtio-blk-device'));
  assert.deepEqual(
    devices.map((d) => /drive=(\w+)/.exec(d)?.[1]),
    ['root', 'work', 'seed'],
  );
});

void test('qemuArgv: KVM uses the host CPU', () => {
  const argv = qemuArgv({ ...base, accel: 'kvm' });
  assert.equal(argv[argv.indexOf('-accel') + 1], 'kvm');
  assert.equal(argv[argv.indexOf('-cpu') + 1], 'host');
  assert.deepEqual(qemuMachineArgs('kvm').slice(0, 6), [
    '-M',
    'microvm,x-option-roms=off,rtc=on',
    '-accel',
    'kvm',
    '-cpu',
    'host',
  ]);
});

void test('qemuArgv: a TCG cache size becomes tb-size under TCG only; a bad one is refused', () => {
  const tcg = qemuArgv(base, { tcgCacheMib: 128 });
  assert.equal(tcg[tcg.indexOf('-accel') + 1], 'tcg,tb-size=128');
  assert.equal(qemuArgv(base)[qemuArgv(base).indexOf('-accel') + 1], 'tcg');
  const kvm = qemuArgv({ ...base, accel: 'kvm' }, { tcgCacheMib: 128 });
  assert.equal(kvm[kvm.indexOf('-accel') + 1], 'kvm');
  for (const bad of [0, -1, 1.5, NaN])
    assert.throws(
      () => qemuArgv(base, { tcgCacheMib: bad }),
      (e: unknown) => e instanceof BangerError && e.code === 'InvalidArgument' && /TCG cache/.test(e.message),
      String(bad),
    );
});

void test('qemuArgv: egress lifts restrict, and only then', () => {
  const on = qemuArgv({ ...base, network: { ...base.network, egress: true } as LaunchSpec['network'] });
  assert.ok(on.includes('user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:2222-:22'));
  assert.ok(qemuArgv(base).some((a) => a.includes('restrict=on')));
});

void test('qemuArgv: the SSH forward binds loopback only', () => {
  for (const hostAddress of ['0.0.0.0', '192.168.1.4', '', 'localhost', '127.0.0.256']) {
    assert.throws(
      () => qemuArgv({ ...base, network: { ...base.network, hostAddress } as LaunchSpec['network'] }),
      (e: unknown) => e instanceof BangerError && e.code === 'InvalidArgument' && /loopback/.test(e.message),
      hostAddress,
    );
  }
  assert.doesNotThrow(() =>
    qemuArgv({ ...base, network: { ...base.network, hostAddress: '127.0.0.2' } as LaunchSpec['network'] }),
  );
});

void test('qemuArgv: tap networking', () => {
  const argv = qemuArgv({ ...base, network: { mode: 'tap', tapName: 'bgtap0', mac: '52:54:00:00:00:01' } });
  const i = argv.indexOf('-netdev');
  // prettier-ignore
  assert.deepEqual(argv.slice(i, i + 4), [
    '-netdev', 'tap,id=n0,ifname=bgtap0,script=no,downscript=no',
    '-device', 'virtio-net-device,netdev=n0,mac=52:54:00:00:00:01',
  ]);
  assert.throws(
    () => qemuArgv({ ...base, network: { mode: 'tap', tapName: 'bad,name=x', mac: '52:54:00:00:00:01' } }),
    BangerError,
  );
});

void test('qemuArgv: the host<->guest channel is a virtio-serial port named banger.0', () => {
  const argv = qemuArgv({ ...base, channelSocketPath: '/vms/v1/ch.sock' });
  // prettier-ignore
  assert.deepEqual(argv.slice(-6), [
    '-device', 'virtio-serial-device',
    '-chardev', 'socket,id=ch0,path=/vms/v1/ch.sock,server=on,wait=off',
    '-device', 'virtserialport,chardev=ch0,name=banger.0',
  ]);
});

void test('qemuArgv: the bulk port is a second port on the same device, named banger.bulk, only beside the channel', () => {
  const argv = qemuArgv({ ...base, channelSocketPath: '/vms/v1/ch.sock', bulkSocketPath: '/vms/v1/bulk.sock' });
  // prettier-ignore
  assert.deepEqual(argv.slice(-10), [
    '-device', 'virtio-serial-device',
    '-chardev', 'socket,id=ch0,path=/vms/v1/ch.sock,server=on,wait=off',
    '-device', 'virtserialport,chardev=ch0,name=banger.0',
    '-chardev', 'socket,id=ch1,path=/vms/v1/bulk.sock,server=on,wait=off',
    '-device', 'virtserialport,chardev=ch1,name=banger.bulk',
  ]);
  assert.ok(!qemuArgv({ ...base, bulkSocketPath: '/vms/v1/bulk.sock' }).some((a) => a.includes('bulk')));
});

void test('qemuArgv: commas in paths are escaped for QEMU option syntax', () => {
  assert.equal(qemuOptValue('/a,b/c'), '/a,,b/c');
  const argv = qemuArgv({ ...base, consoleLogPath: '/x,y/console.log', controlSocketPath: '/x,y/qmp.sock' });
  assert.ok(argv.includes('file,id=con0,path=/x,,y/console.log,append=on'));
  assert.ok(argv.includes('socket,id=qmp0,path=/x,,y/qmp.sock,server=on,wait=off'));
});

void test('qemuArgv: -incoming for a restore', () => {
  assert.deepEqual(qemuArgv(base, { incoming: 'exec:cat state' }).slice(-2), ['-incoming', 'exec:cat state']);
});

void test('qemuArgv: a restore maps a RAM file private and defers the load; a RAM stream loads at once into its own kind of RAM', () => {
  const memory = (argv: string[]) => argv.slice(argv.indexOf('-m') + 2, argv.indexOf('-msg'));
  const saved = { statePath: '/s,1/state.bin', ramPath: '/s,1/memory.ram' };
  const file = qemuArgv({ ...base, incoming: { ...saved, ram: 'file' } });
  // Private (share=off): the guest's writes never reach the snapshot's file, which other VMs map too.
  assert.deepEqual(memory(file), ['-object', 'memory-backend-file,id=ram0,size=1024M,mem-path=/s,,1/memory.ram,share=off', '-machine', 'memory-backend=ram0']);
  assert.deepEqual(file.slice(-2), ['-incoming', 'defer']);
  const stream = qemuArgv({ ...base, incoming: { ...saved, ram: 'stream' } });
  assert.deepEqual(memory(stream), ['-object', 'memory-backend-memfd,id=ram0,size=1024M,share=on', '-machine', 'memory-backend=ram0']);
  assert.deepEqual(stream.slice(-2), ['-incoming', 'exec:cat /s,1/state.bin']);
  // Saved from built-in RAM (a VM booted before RAM backends): its stream names that block.
  const machine = qemuArgv({ ...base, incoming: { ...saved, ram: 'stream-machine' } });
  assert.deepEqual(memory(machine), []);
  assert.deepEqual(machine.slice(-2), ['-incoming', 'exec:cat /s,1/state.bin']);
});

void test('qemuArgv: rejects what QEMU would misread', () => {
  assert.throws(() => qemuArgv({ ...base, vcpus: 0 }), /vCPU/);
  assert.throws(() => qemuArgv({ ...base, memoryMib: 16 }), /memory/);
  assert.throws(() => qemuArgv({ ...base, network: { ...base.network, mac: 'zz' } as LaunchSpec['network'] }), /MAC/);
  assert.throws(() => qemuArgv({ ...base, disks: [base.disks[0]!, base.disks[0]!] }), /twice/);
});

void test('qemuNameOption carries the VM id, and an id is not a prefix match of another', () => {
  assert.equal(qemuNameOption('abc'), 'guest=banger-abc,process=banger-abc');
  assert.ok(!qemuNameOption('abcd').includes(qemuNameOption('abc')));
});

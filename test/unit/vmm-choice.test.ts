import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, isBangerError } from '../../src/errors/index.js';
import type { ReadyImage } from '../../src/daemon/services/image/service.js';
import { chooseVmm } from '../../src/daemon/services/vm/vmm-choice.js';
import { planCreate } from '../../src/daemon/services/vm/create.js';
import type { DriverRegistry, VmmDriver, VmmFeature, VmmName } from '../../src/daemon/vmm/driver.js';

/** Drivers that declare what the real ones do; `fcOk` says whether Firecracker could run here. */
function host(o: { fcOk: boolean; kvm: boolean }) {
  const driver = (name: VmmName, features: VmmFeature[], ok: boolean) =>
    ({ name, features: new Set(features), availability: async () => (ok ? { ok } : { ok, reason: 'firecracker was not found on PATH' }) }) as unknown as VmmDriver;
  const drivers: DriverRegistry = new Map([
    ['qemu', driver('qemu', ['qcow2', 'userNetworking', 'tap', 'virtioSerial', 'tcg', 'bzImage'], true)],
    ['firecracker', driver('firecracker', ['tap', 'vsock'], o.fcOk)],
  ]);
  return { drivers, accel: { resolve: () => Promise.reject(new Error('unused')), kvmUsable: async () => o.kvm } };
}
const image = {} as ReadyImage;

test('auto picks Firecracker only for a tap VM on a host where it runs with KVM; else QEMU', async () => {
  assert.equal(await chooseVmm('auto', image, host({ fcOk: true, kvm: true }), 'tap'), 'firecracker');
  assert.equal(await chooseVmm('auto', image, host({ fcOk: true, kvm: true }), 'loopback'), 'qemu', 'Firecracker has no user networking');
  assert.equal(await chooseVmm('auto', image, host({ fcOk: true, kvm: false }), 'tap'), 'qemu');
  assert.equal(await chooseVmm('auto', image, host({ fcOk: false, kvm: true }), 'tap'), 'qemu');
});

test('--vmm firecracker: a loopback VM is refused with the flag that fixes it; a host without it says why', async () => {
  await assert.rejects(chooseVmm('firecracker', image, host({ fcOk: true, kvm: true }), 'loopback'), (e: unknown) => {
    assert.ok(isBangerError(e));
    assert.equal(e.code, ErrorCode.FailedPrecondition);
    assert.match(e.message, /firecracker has no loopback networking/);
    assert.match(e.hint ?? '', /--network tap/);
    return true;
  });
  assert.equal(await chooseVmm('firecracker', image, host({ fcOk: true, kvm: true }), 'tap'), 'firecracker');
  await assert.rejects(
    chooseVmm('firecracker', image, host({ fcOk: false, kvm: true }), 'tap'),
    (e: unknown) => isBangerError(e) && e.code === ErrorCode.FailedPrecondition && /firecracker cannot run here: firecracker was not found on PATH/.test(e.message),
  );
});

test('vm create --vmm firecracker on a host without it is refused before any image is built', async () => {
  const h = host({ fcOk: false, kvm: true });
  let built = false;
  const deps = {
    ...h,
    tap: { supported: async () => ({ ok: true }) },
    images: {
      byIdReady: () => image,
      ensureReady: async () => {
        built = true;
        return image;
      },
    },
    defaultNetwork: 'loopback' as const,
  } as unknown as Parameters<typeof planCreate>[1];
  await assert.rejects(
    planCreate({ name: 'fc1', vmm: 'firecracker', network: 'tap' }, deps, () => {}),
    (e: unknown) => isBangerError(e) && /firecracker cannot run here/.test(e.message),
  );
  assert.equal(built, false);
  // auto still needs the image (KVM is probed with its kernel).
  await planCreate({ name: 'q1' }, deps, () => {});
  assert.equal(built, true);
});

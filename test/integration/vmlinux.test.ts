/**
 * The kernel Firecracker is given: banger extracts an uncompressed ELF vmlinux from an image's bzImage
 * (Firecracker boots no bzImage). Here that runs on Debian's cloud kernel, the one the test image boots, and the
 * result is booted: QEMU's microvm machine loads an ELF kernel through its PVH entry note, as Firecracker can, so
 * a vmlinux cut short or mangled would not reach the probe marker. Firecracker itself is not installable here.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { runBootProbe } from '../../src/daemon/vmm/accel.js';
import { QemuDriver } from '../../src/daemon/vmm/qemu/driver.js';
import { detectKernelFormat, extractVmlinux, readHead } from '../../src/daemon/vmm/vmlinux.js';
import { runCommand } from '../../src/shared/command.js';
import { ensureTestKernel, qemuMissingReason, tscCmdline, writeProbeInitrd } from '../helpers/qemu-tiny-guest.js';
import { scratchDir } from '../helpers/scratch.js';

const skip = qemuMissingReason();
if (skip) process.stderr.write(`skipping the vmlinux boot: ${skip}\n`);

let dir: string;
let bzImage: string;
before(async () => {
  dir = scratchDir('banger-vmlinux-it-');
  bzImage = process.env.BANGER_TEST_BZIMAGE ?? (await ensureTestKernel()).kernel;
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("the vmlinux extracted from Debian's cloud bzImage is a whole x86-64 ELF kernel that boots", { skip }, async () => {
  assert.equal(detectKernelFormat(await readHead(bzImage, 0x210)), 'bzImage', `${bzImage} is not a bzImage`);
  const vmlinux = join(dir, 'vmlinux');
  const res = await extractVmlinux(bzImage, vmlinux);
  const head = await readHead(vmlinux, 64);
  assert.equal(detectKernelFormat(head), 'elf');
  assert.equal(head[4], 2, 'ELF64');
  assert.equal(head.readUInt16LE(18), 0x3e, 'x86-64');
  assert.ok(res.size > 10 * 1024 * 1024, `only ${res.size} bytes`);

  const initrd = join(dir, 'probe.img');
  await writeProbeInitrd(initrd);
  const binary = (await new QemuDriver({ run: runCommand, log: { debug() {}, info() {}, warn() {} } }).availability()).binary!;
  const boot = await runBootProbe({ binary, accel: 'tcg', kernelPath: vmlinux, initrdPath: initrd, extraCmdline: await tscCmdline(), timeoutMs: 60_000 });
  process.stderr.write(`the extracted vmlinux under TCG: ${boot.detail} (${boot.elapsedMs} ms)\n`);
  assert.equal(boot.ok, true, boot.detail);
});

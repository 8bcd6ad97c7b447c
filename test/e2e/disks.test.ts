/**
 * Work disks and `vm set` on real QEMU VMs: a 64G work disk costs the host a few MiB; a stopped VM given more
 * CPUs and a bigger work disk boots with them (the guest's `nproc` and `df /root` say so) and keeps its files;
 * a running VM's disk is not grown and a shrink is refused, each with its exit code and a hint; what the guest
 * deletes stops costing the host.
 * The host-disk-full paths are in test/integration/disks.test.ts (a tmpfs BANGER_HOME in a mount namespace).
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { git, isolateGitConfig, tmp, write } from '../helpers/workspace-repo.js';

const VM = 'e2e-disks';
const BIG = 'e2e-disks-64g';
const MIB = 1024 * 1024;
const { step, printConsolesIfFailed } = e2eSteps();

interface Vm {
  name: string;
  state: string;
  vcpus: number;
  diskSizeMib: number;
  disks: { id: 'root' | 'work'; path: string; virtualBytes: number; hostBytes: number }[];
}

async function show(name: string): Promise<Vm> {
  return JSON.parse((await bangerOk(['vm', 'show', name, '--json'])).stdout) as Vm;
}

/** The size of the guest's /root filesystem in MiB, as `df -BM` prints it. */
async function guestRootMib(): Promise<number> {
  const out = (await bangerOk(['vm', 'exec', VM, '--', 'df', '-BM', '--output=size', '/root'])).stdout;
  const m = /(\d+)M\s*$/.exec(out.trim());
  assert.ok(m, `df printed: ${out}`);
  return Number(m[1]);
}

async function guestCpus(): Promise<number> {
  return Number((await bangerOk(['vm', 'exec', VM, '--', 'nproc'])).stdout.trim());
}

void describe('work disks and vm set on real VMs', { timeout: 1_200_000 }, () => {
  before(async () => {
    isolateGitConfig();
    await banger(['vm', 'delete', '--force', VM, BIG]);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', VM, BIG]);
  });

  step('a VM with a 64G work disk costs the host at most 64 MiB for it', async () => {
    await bangerOk(['vm', 'create', '--name', BIG, '--disk-size', '64G'], 0, { timeoutMs: 900_000 });
    const work = (await show(BIG)).disks.find((d) => d.id === 'work')!;
    assert.equal(work.virtualBytes, 64 * 1024 * MIB);
    const used = statSync(work.path).blocks * 512;
    assert.ok(used <= 64 * MIB, `the 64G work disk uses ${(used / MIB).toFixed(1)} MiB on the host`);
    assert.equal(work.hostBytes, used, 'vm show reports what du would');
    const human = (await bangerOk(['vm', 'show', BIG])).stdout;
    assert.match(human, /Disk work: +65536 MiB virtual, [\d.]+ MiB used on the host/);
    await bangerOk(['vm', 'delete', BIG]);
  });

  step('a VM made with 1 CPU and a 1G work disk sees them', async () => {
    await bangerOk(['vm', 'create', '--name', VM, '--cpus', '1', '--memory', '768M', '--disk-size', '1G', '--start'], 0, {
      timeoutMs: 900_000,
    });
    assert.equal(await guestCpus(), 1);
    const size = await guestRootMib();
    assert.ok(size > 900 && size <= 1024, `df /root says ${size}M for a 1G disk`);
    await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', 'echo kept > /root/keep.txt && sync']);
  });

  step('space the guest frees on its work disk is given back on the host', async () => {
    const hostUsed = async () => (await show(VM)).disks.find((d) => d.id === 'work')!.hostBytes;
    await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', 'head -c 64M /dev/urandom > /root/freed.bin && sync']);
    const full = await hostUsed();
    await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', 'rm /root/freed.bin && sync']);
    // The discards go out with the journal commit that sync forces; give QEMU a moment to punch them.
    let after = full;
    for (let i = 0; i < 20 && full - after < 60 * MIB; i++) {
      await new Promise((r) => setTimeout(r, 250));
      after = await hostUsed();
    }
    assert.ok(
      full - after >= 60 * MIB,
      `the host file went from ${(full / MIB).toFixed(1)} to ${(after / MIB).toFixed(1)} MiB after a 64 MiB file was deleted in the guest`,
    );
  });

  step("a running VM's disk is not grown: exit 67 and a hint to stop it first; nothing changes", async () => {
    const r = await banger(['vm', 'set', VM, '--disk-size', '2G']);
    assert.equal(r.code, 67, r.stderr);
    assert.match(r.stderr, /banger vm stop e2e-disks/);
    assert.equal((await show(VM)).diskSizeMib, 1024);
  });

  step('stopped, `vm set --cpus 2 --disk-size 2G`: the guest boots with 2 CPUs and a 2G /root, files kept', async () => {
    await bangerOk(['vm', 'stop', VM]);
    const set = JSON.parse((await bangerOk(['vm', 'set', VM, '--cpus', '2', '--disk-size', '2G', '--json'])).stdout) as Vm;
    assert.deepEqual([set.vcpus, set.diskSizeMib], [2, 2048]);
    assert.equal(set.disks.find((d) => d.id === 'work')!.virtualBytes, 2048 * MIB);
    await bangerOk(['vm', 'start', VM], 0, { timeoutMs: 600_000 });
    assert.equal(await guestCpus(), 2);
    const size = await guestRootMib();
    assert.ok(size > 1900 && size <= 2048, `df /root says ${size}M after growing to 2G`);
    assert.equal((await bangerOk(['vm', 'exec', VM, '--', 'cat', '/root/keep.txt'])).stdout, 'kept\n');
  });

  step('a workspace import that fills the guest disk fails clearly and records nothing', async () => {
    const repo = join(tmp('banger-disks-full-'), 'repo');
    mkdirSync(repo);
    git(repo, 'init', '-q', '-b', 'main');
    write(repo, 'big.bin', randomBytes(8 * MIB)); // incompressible: 8 MiB land on the guest disk
    git(repo, 'add', '-A');
    git(repo, 'commit', '-q', '-m', 'big');
    // Leave ~3 MiB usable on /root: free blocks (root may use the reserved ones) minus 20 MiB, of which ext4
    // keeps up to 16 MiB back for its own metadata (measured on a loop-mounted 2G work disk).
    const fill = "set -- $(stat -f -c '%f %S' /root) && fallocate -l $(( $1 * $2 - 20971520 )) /root/fill && sync";
    await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', fill]);
    try {
      const r = await banger(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', '/root/full']);
      assert.equal(r.code, 71, r.stderr);
      assert.match(r.stderr, /the guest's disk is full/);
      assert.match(r.stderr, /banger vm set NAME --disk-size/);
      assert.equal(((await show(VM)) as Vm & { workspace: unknown }).workspace, null, 'no workspace recorded');
    } finally {
      await bangerOk(['vm', 'exec', VM, '--', 'sh', '-c', 'rm -rf /root/fill /root/full && sync']);
    }
  });

  step('shrinking the work disk is refused with exit 64 and changes nothing', async () => {
    const r = await banger(['vm', 'set', VM, '--disk-size', '1G']);
    assert.equal(r.code, 64, r.stderr);
    assert.match(r.stderr, /cannot shrink/);
    assert.equal((await show(VM)).diskSizeMib, 2048);
  });

  step('CPUs and memory set on a running VM are recorded for its next start, and it says so', async () => {
    const r = await bangerOk(['vm', 'set', VM, '--cpus', '1']);
    assert.match(r.stderr, /apply at the next start/);
    assert.equal(await guestCpus(), 2, 'the running guest is unchanged');
    await bangerOk(['vm', 'restart', VM], 0, { timeoutMs: 600_000 });
    assert.equal(await guestCpus(), 1);
  });
});

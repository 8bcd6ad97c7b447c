/**
 * Run by test/integration/disks.test.ts inside a mount namespace of its own, with BANGER_HOME (argv[2]) a small
 * tmpfs mounted there: starts the daemon in-process, makes a VM, fills the filesystem to leave `leaveMib` free,
 * then tries create, start and a disk grow. Prints what it saw as one JSON object on stdout.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdirSync, statSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { BangerClient } from '../../src/client/client.js';
import type { BangerError } from '../../src/errors/index.js';
import { ImageMethods } from '../../src/protocol/image.js';
import { VmMethods } from '../../src/protocol/vm.js';
import { Paths } from '../../src/shared/paths.js';
import { startTestDaemon } from './daemon-fixtures.js';

const home = process.argv[2]!;
const leaveMib = Number(process.argv[3] ?? 12);
const paths = new Paths(home);

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'banger.js');

/** Runs the CLI without blocking this process's event loop (the daemon it talks to runs here). */
function runCli(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, BANGER_HOME: home, NO_COLOR: '1' } }, (err, _out, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr }),
    );
  });
}

const failure = async (p: Promise<unknown>) => {
  try {
    await p;
    return null;
  } catch (e) {
    const b = e as BangerError;
    return { code: b.code, message: b.message, hint: b.hint ?? null };
  }
};

const daemon = await startTestDaemon(paths);
const client = await BangerClient.connect(paths.socket);
try {
  await client.call(ImageMethods.build, { name: 'tiny' });
  const made = await client.call(VmMethods.create, { name: 'a', image: 'tiny', vmm: 'qemu', accel: 'tcg', diskSizeMib: 1024 });
  const fs = statfsSync(home);
  const fill = fs.bavail * fs.bsize - leaveMib * 1024 * 1024;
  execFileSync('fallocate', ['-l', String(fill), join(home, 'filler')]);

  const create = await failure(client.call(VmMethods.create, { name: 'big', image: 'tiny', vmm: 'qemu', accel: 'tcg', diskSizeMib: 65536 }));
  const start = await failure(client.call(VmMethods.start, { name: 'a' }));
  const grow = await failure(client.call(VmMethods.set, { name: 'a', diskSizeMib: 131072 }));
  const after = await client.call(VmMethods.show, { name: 'a' });
  // The built CLI (when there is one), as a person would run it: its exit code and message.
  const cli = existsSync(CLI) ? await runCli(['vm', 'start', 'a']) : null;
  const result = {
    made: { dir: made.dir, disks: made.disks },
    create,
    start,
    grow,
    names: (await client.call(VmMethods.list, undefined)).map((v) => v.name),
    vmDirs: readdirSync(paths.vmsDir),
    aFiles: readdirSync(made.dir).sort(),
    cli,
    after: { state: after.state, diskSizeMib: after.diskSizeMib, workBytes: statSync(join(made.dir, 'work.ext4')).size },
  };
  process.stdout.write(JSON.stringify(result) + '\n');
} finally {
  client.close();
  await daemon.stop();
}

/**
 * Run before the e2e tier (`npm run test:e2e`): the e2e state directory is kept between runs so the guest
 * image is built once per machine, and a run that was killed part-way (Ctrl-C, a CI timeout) can leave
 * what its after() hooks would have removed: a warm pool still configured (whose VMs would boot in the
 * background under every later suite), VMs, snapshots. This puts the state directory back to "images
 * only" through the CLI, like a user would, and says what it removed.
 */
import { banger, bangerOk, E2E_HOME } from './cli.js';

const say = (line: string) => process.stderr.write(`e2e reset (${E2E_HOME}): ${line}\n`);

async function listJson<T>(args: string[]): Promise<T[]> {
  return JSON.parse((await bangerOk([...args, '--json'])).stdout) as T[];
}

async function main(): Promise<void> {
  for (const p of await listJson<{ image: string; size: number }>(['pool', 'status'])) {
    if (p.size === 0) continue;
    say(`removing the warm pool of image ${p.image} (size ${p.size}) a previous run left`);
    await bangerOk(['pool', 'set', p.image, '--size', '0']);
  }
  const vms = (await listJson<{ name: string }>(['vm', 'list'])).map((v) => v.name);
  if (vms.length > 0) {
    say(`deleting VMs a previous run left: ${vms.join(', ')}`);
    await bangerOk(['vm', 'delete', '--force', ...vms], 0, { timeoutMs: 120_000 });
  }
  for (const s of await listJson<{ name: string }>(['snapshot', 'list'])) {
    say(`deleting snapshot ${s.name} a previous run left`);
    const r = await banger(['snapshot', 'delete', s.name]);
    if (r.code !== 0) say(`could not delete snapshot ${s.name}: ${r.stderr.trim()}`);
  }
}

await main();

/**
 * The build caches: in a fresh state directory, the default image's first build (nothing cached: it
 * downloads every package, bootstraps and saves a base layer) against a rebuild with one more package
 * (it restores that base layer and installs only the new package, downloading only it). Also prints each
 * build's per-step seconds as `image show` records them.
 * Usage: npm run build && node --import tsx bench/image-cache.ts [extra-package]
 * Needs the Debian mirror (the host's apt sources) and root, like any image build. Leaves nothing behind.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, sh, timeIt } from './common.js';

const extra = process.argv[2] ?? 'sl';
const home = mkdtempSync('/var/tmp/bench-image-cache-');
// Its own DNS port: the default one may belong to another daemon on this host.
writeFileSync(join(home, 'config.json'), JSON.stringify({ dns: { address: '127.0.0.1', port: 25000 + (process.pid % 5000) } }));
const banger = (args: string[]) => sh(CLI, args, { env: { BANGER_HOME: home } });

interface Shown {
  buildSeconds: number;
  params: { stepSeconds?: { step: string; seconds: number }[] };
}
const steps = (name: string) => {
  const i = JSON.parse(banger(['image', 'show', name, '--json'])) as Shown;
  return (i.params.stepSeconds ?? []).map((s) => `${s.step} ${s.seconds} s`).join(', ');
};

try {
  const first = timeIt(() => banger(['image', 'build', 'first']));
  const second = timeIt(() => banger(['image', 'build', 'second', '--packages', extra]));
  process.stdout.write(
    `image build of the default set, then the same plus ${extra}, in a fresh state directory\n` +
      `  first build (empty cache)          ${(first / 1000).toFixed(1)} s  (${steps('first')})\n` +
      `  rebuild with one more package      ${(second / 1000).toFixed(1)} s  (${steps('second')})\n` +
      `  ratio rebuild/first: ${(second / first).toFixed(2)}x\n`,
  );
} finally {
  try {
    banger(['daemon', 'stop']);
  } catch {
    /* not running */
  }
  rmSync(home, { recursive: true, force: true });
}

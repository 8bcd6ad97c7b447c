// One build step: bundle the two entry points. Native and large modules stay external and load from node_modules.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';

mkdirSync('dist', { recursive: true });

/** A hash of what is bundled: a CLI that meets a daemon of another build restarts it (src/client/launcher.ts). */
function buildId() {
  const hash = createHash('sha256');
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else {
        hash.update(p);
        hash.update(readFileSync(p));
      }
    }
  };
  walk('src');
  hash.update(readFileSync('package-lock.json'));
  return hash.digest('hex').slice(0, 12);
}
const define = { __BANGER_BUILD__: JSON.stringify(buildId()) };

const entries = { banger: 'src/cli/main.ts', bangerd: 'src/daemon/main.ts' };
// Split into chunks: what the CLI imports lazily (each top-level command, the RPC client) is then neither
// read nor compiled by a command that does not use it. Chunks from earlier builds go first.
for (const f of readdirSync('dist', { withFileTypes: true }))
  if (f.isFile() && /-[A-Z0-9]{8}\.js(\.map)?$/.test(f.name)) rmSync(`dist/${f.name}`);
await build({
  entryPoints: entries,
  outdir: 'dist',
  bundle: true,
  splitting: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  sourcemap: true,
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __bangerCreateRequire } from 'node:module'; const require = __bangerCreateRequire(import.meta.url);",
  },
  external: ['better-sqlite3', 'ssh2', 'cpu-features', 'pino', 'thread-stream', '@jdxcode/mise-linux-x64'],
  define,
  logLevel: 'warning',
});
// The package's API (`import { connect } from 'banger'`): dist/index.js, with its declarations under dist/types.
await build({
  entryPoints: { index: 'src/client/index.ts' },
  outdir: 'dist',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  sourcemap: true,
  // Dependencies load from the consumer's node_modules, shared with its own copies.
  packages: 'external',
  define,
  logLevel: 'warning',
});
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
// The guest agent: one self-contained file (zod included) for the guest image's Debian nodejs (18).
await build({
  entryPoints: { 'banger-agent': 'src/agent/main.ts' },
  outdir: 'dist',
  bundle: true,
  platform: 'node',
  target: 'node18',
  format: 'esm',
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
});
for (const name of [...Object.keys(entries), 'banger-agent']) chmodSync(`dist/${name}.js`, 0o755);

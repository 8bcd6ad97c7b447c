// One build step: bundle the two entry points. Native and large modules stay external and load from node_modules.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, rmSync } from 'node:fs';

mkdirSync('dist', { recursive: true });

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

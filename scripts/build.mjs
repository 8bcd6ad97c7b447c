// One build step: bundle the two entry points. Native and large modules stay external and load from node_modules.
import { build } from 'esbuild';
import { chmodSync } from 'node:fs';

const entries = { banger: 'src/cli/main.ts', bangerd: 'src/daemon/main.ts' };
await build({
  entryPoints: entries,
  outdir: 'dist',
  bundle: true,
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

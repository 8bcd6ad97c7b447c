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
/** What the host-side bundles share. */
const node20 = { outdir: 'dist', bundle: true, platform: 'node', target: 'node20', format: 'esm', sourcemap: true, define, logLevel: 'warning' };

const entries = { 'banger-program': 'src/cli/program.ts', bangerd: 'src/daemon/main.ts' };
// Split into chunks: what the CLI imports lazily (each top-level command, the RPC client) is then neither
// read nor compiled by a command that does not use it. Chunks from earlier builds go first.
for (const f of readdirSync('dist', { withFileTypes: true }))
  if (f.isFile() && /-[A-Z0-9]{8}\.js(\.map)?$/.test(f.name)) rmSync(`dist/${f.name}`);
await build({
  ...node20,
  entryPoints: entries,
  splitting: true,
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __bangerCreateRequire } from 'node:module'; const require = __bangerCreateRequire(import.meta.url);",
  },
  external: ['better-sqlite3', 'ssh2', 'cpu-features', 'pino', 'thread-stream', '@jdxcode/mise-linux-x64'],
});
// The CLI's entry, one file: its fast paths (`vm exec`, `vm workspace prepare`) run with no other module to
// resolve, read and compile (5 ms of a ~120 ms `vm exec -- true` here); the full program is the split build's.
// Its #! line drops NODE_EXTRA_CA_CERTS: Node 20 reads and parses that file, and builds its whole root
// certificate store, before running any script when the variable is set (50 ms of a 70 ms `node -e 0` where it
// is set here), and nothing the CLI or the daemon it starts does uses TLS. GNU env's -S splits the line.
await build({
  ...node20,
  entryPoints: { banger: 'src/cli/main.ts' },
  banner: { js: '#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node' },
  // The progress spinner loads from node_modules when a long command shows one.
  external: ['ora'],
  plugins: [
    {
      name: 'full-program',
      setup: (b) => b.onResolve({ filter: /^\.\/program\.js$/ }, () => ({ path: './banger-program.js', external: true })),
    },
  ],
});
// The package's API (`import { connect } from 'banger'`): dist/index.js, with its declarations under dist/types.
// Dependencies load from the consumer's node_modules, shared with its own copies.
await build({ ...node20, entryPoints: { index: 'src/client/index.ts' }, packages: 'external' });
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
// The guest agent: one self-contained file (zod included) for the guest image's Debian nodejs (18). It loads no
// node:crypto: in a guest that cost its idle RSS ~1 MiB (OpenSSL's pages), so a change that brings it in fails here.
const agent = await build({
  entryPoints: { 'banger-agent': 'src/agent/main.ts' },
  outdir: 'dist',
  bundle: true,
  platform: 'node',
  target: 'node18',
  format: 'esm',
  banner: { js: '#!/usr/bin/env node' },
  logLevel: 'warning',
  metafile: true,
});
const agentCrypto = Object.entries(agent.metafile.inputs).filter(([, input]) =>
  input.imports.some((i) => i.path === 'node:crypto' || i.path === 'crypto'),
);
if (agentCrypto.length > 0)
  throw new Error(`the guest agent must not load node:crypto (its idle memory); imported by ${agentCrypto.map(([p]) => p).join(', ')}`);
for (const name of ['banger', 'bangerd', 'banger-agent']) chmodSync(`dist/${name}.js`, 0o755);

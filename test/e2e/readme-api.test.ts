/**
 * README's API example, run as written on a real VM: the ```ts block under "## API" is copied into a file in
 * this checkout (so `import ... from 'banger'` resolves to the built package, dist/index.js) and run with
 * tsx from a git repository the test makes, BANGER_HOME being the e2e tier's.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { E2E_HOME, REPO_ROOT, banger, e2eSteps } from '../helpers/cli.js';
import { scratchDir } from '../helpers/scratch.js';

const run = promisify(execFile);
const { step, printConsolesIfFailed } = e2eSteps();

/** The first ```ts block after the "## API" heading. */
function apiExample(): string {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## API\n'));
  const m = /```ts\n([\s\S]*?)\n```/.exec(section);
  assert.ok(m, 'README has a ts block under ## API');
  return m[1]!;
}

void describe("README's API example on a real VM", { timeout: 900_000 }, () => {
  const repo = scratchDir('banger-readme-api-');
  const script = join(REPO_ROOT, `.test-readme-api-${process.pid}.ts`);

  before(async () => {
    await banger(['vm', 'delete', '--force', 'fix-42']);
    const git = (...args: string[]) => run('git', ['-C', repo, ...args]);
    await git('init', '-q');
    writeFileSync(join(repo, 'README'), 'a repo for the example\n');
    await git('add', '-A');
    await git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'init');
    writeFileSync(script, apiExample());
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', 'fix-42']);
    rmSync(script, { force: true });
    rmSync(repo, { recursive: true, force: true });
  });

  step('runs as written: boots, imports, runs, drives the JSONL agent to agent_end, exports, deletes', async () => {
    // tsx from this checkout: the example runs in the test repository, which has no node_modules.
    const r = await run(process.execPath, ['--import', import.meta.resolve('tsx'), script], {
      cwd: repo,
      env: { ...process.env, BANGER_HOME: E2E_HOME, NO_COLOR: '1' },
      timeout: 600_000,
      maxBuffer: 16 << 20,
    });
    // `npm` is not in the image: the example prints the exit code it got, which is the point (a result, not a throw).
    assert.match(r.stdout, /^tests exited \d+$/m);
    assert.deepEqual(r.stdout.split('\n').filter((l) => /^agent_|^message$/.test(l)), ['agent_start', 'message', 'agent_end']);
    const list = JSON.parse((await banger(['vm', 'list', '--json'])).stdout) as { name: string }[];
    assert.ok(!list.some((v) => v.name === 'fix-42'), 'the example deleted its VM');
  });
});

/**
 * One TAB of the bash completion, timed inside one bash (its start-up excluded), in one run:
 * - a command word (`banger vm ex<TAB>`): the script alone, no process started;
 * - VM names (`banger vm show <TAB>`): `banger __complete vm any` asking bangerd for its VMs (it must be
 *   running for BANGER_HOME; otherwise this measures the no-daemon path);
 * against the floor of anything that runs Node at TAB time: `node -e 0` started from the same bash.
 * Usage: npm run build && BANGER_HOME=... node --import tsx bench/completion.ts [runs]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, HOME, banger, report, sh } from './common.js';

const runs = Number(process.argv[2] ?? 15);
const dir = mkdtempSync(join(tmpdir(), 'bench-completion-'));
try {
  const script = join(dir, 'banger.bash');
  writeFileSync(script, banger(['completion', 'bash']));
  writeFileSync(join(dir, 'banger'), `#!/bin/sh\nexec '${CLI}' "$@"\n`, { mode: 0o755 });
  const daemon = spawnSync(CLI, ['daemon', 'status'], { env: { ...process.env, BANGER_HOME: HOME } }).status === 0;
  // Each line: milliseconds of one call; `node -e 0` is timed the same way as a TAB that runs banger.
  const timed = (call: string) =>
    sh(
      'bash',
      [
        '--norc',
        '-c',
        `source '${script}'
tab() { COMP_WORDS=("$@"); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _banger; }
for ((i = 0; i < ${runs + 1}; i++)); do
  s=$EPOCHREALTIME; ${call} >/dev/null; e=$EPOCHREALTIME
  [ $i -gt 0 ] && echo $(( (\${e/./} - \${s/./}) ))
done`,
      ],
      { env: { BANGER_HOME: HOME, PATH: `${dir}:${process.env.PATH}` } },
    )
      .trim()
      .split('\n')
      .map((us) => Number(us) / 1000);
  const node = timed(`'${process.execPath}' -e 0`);
  report('TAB on a command word (banger vm ex)', timed('tab banger vm ex'), node, 'node -e 0');
  report(`TAB on VM names (banger vm show ), daemon ${daemon ? 'running' : 'NOT running'}`, timed("tab banger vm show ''"), node, 'node -e 0');
} finally {
  rmSync(dir, { recursive: true, force: true });
}

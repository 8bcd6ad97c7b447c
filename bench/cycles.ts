/**
 * Stop/start cycles of one VM: each cycle stops it, starts it and runs `vm exec -- true`. Samples bangerd's
 * RSS and open fds and the VM's and logs' disk use at the start, every 10% and at the end.
 * Prints the failures and first/last/max of each figure; exits 1 on any failure.
 * Usage: npm run build && node --import tsx bench/cycles.ts [--count 1000] [--cpus 1] [--memory 512M]
 * (a 2-vCPU VM boots in about two thirds of the time under software emulation)
 * State directory: BANGER_HOME, else the e2e tier's (/var/cache/banger-test/e2e-home).
 */
import { parseArgs } from 'node:util';
import { formatCyclesReport, runCycles } from '../test/helpers/cycles.js';
import { HOME } from './common.js';

const { values } = parseArgs({
  options: { count: { type: 'string', default: '1000' }, cpus: { type: 'string', default: '1' }, memory: { type: 'string', default: '512M' } },
});
const count = Number(values.count);
if (!Number.isInteger(count) || count < 1) throw new Error(`--count must be a positive integer, got ${values.count}`);

const result = await runCycles({ home: HOME, count, name: 'chaos-cycles', cpus: Number(values.cpus), memory: values.memory, log: (line) => process.stderr.write(line + '\n') });
process.stdout.write(formatCyclesReport(result) + '\n');
process.exitCode = result.failures.length > 0 ? 1 : 0;

/**
 * kill -9 of bangerd at random points of create, boot (also at the instant QEMU appears), workspace import
 * and export, stop, delete, vm snapshot, vm create --from, vm fork and a warm pool's refill; after each, the next CLI call and the
 * crash invariants (test/helpers/chaos.ts).
 * Prints the per-operation counts and each invariant's violations; exits 1 when any invariant was violated.
 * Usage: npm run build && node --import tsx bench/chaos.ts [--points 500] [--seed N] [--budget-minutes M]
 *        [--ops snapshot,restore,fork,refill]   (only these operations)
 * State directory: BANGER_HOME, else the e2e tier's (/var/cache/banger-test/e2e-home).
 */
import { parseArgs } from 'node:util';
import { CHAOS_OPS, formatChaosReport, runChaos, type ChaosOp } from '../test/helpers/chaos.js';
import { HOME } from './common.js';

const { values } = parseArgs({
  options: {
    points: { type: 'string', default: '500' },
    seed: { type: 'string' },
    'budget-minutes': { type: 'string' },
    ops: { type: 'string' },
  },
});
const ops = values.ops === undefined ? undefined : (values.ops.split(',') as ChaosOp[]);
for (const op of ops ?? []) if (!CHAOS_OPS.includes(op)) throw new Error(`--ops: unknown operation '${op}' (known: ${CHAOS_OPS.join(', ')})`);
const points = Number(values.points);
if (!Number.isInteger(points) || points < 1) throw new Error(`--points must be a positive integer, got ${values.points}`);

const result = await runChaos({
  home: HOME,
  points,
  ops,
  seed: values.seed === undefined ? undefined : Number(values.seed),
  budgetMs: values['budget-minutes'] === undefined ? undefined : Number(values['budget-minutes']) * 60_000,
  log: (line) => process.stderr.write(line + '\n'),
});
process.stdout.write(formatChaosReport(result) + '\n');
process.exitCode = result.violations.length > 0 || result.setupFailures.length > 0 ? 1 : 0;

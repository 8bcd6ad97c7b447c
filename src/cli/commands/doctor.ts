import type { Command } from 'commander';
import { BangerError, ErrorCode } from '../../errors/index.js';
import { DoctorMethods } from '../../protocol/daemon.js';
import type { CliContext } from '../context.js';
import { out } from '../output.js';

export function register(program: Command, ctx: CliContext): void {
  program
    .command('doctor')
    .description('check this host: qemu, mmdebstrap, KVM, Firecracker, disk space, permissions')
    .option('--json', 'print the report as JSON')
    .action(async (o: { json?: boolean }) => {
      const r = await ctx.call(DoctorMethods.run, undefined);
      if (o.json) out.json(r);
      else {
        const mark = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' } as const;
        for (const c of r.checks) {
          out.line(`[${mark[c.status]}] ${c.name}: ${c.detail}`);
          if (c.fix) out.line(`       fix: ${c.fix}`);
        }
      }
      if (!r.ok) throw new BangerError(ErrorCode.FailedPrecondition, 'some checks failed', { hint: 'apply the fixes above' });
    });
}

import type { Command } from 'commander';
import type { CliContext } from '../../context.js';
import * as access from './access.js';
import * as create from './create.js';
import * as inspect from './inspect.js';
import * as lifecycle from './lifecycle.js';
import * as run from './run.js';
import * as session from './session.js';
import * as set from './set.js';
import * as stats from './stats.js';
import * as sync from './sync.js';
import * as workspace from './workspace.js';
import { registerVmFork, registerVmSnapshot } from '../snapshot.js';

export function register(program: Command, ctx: CliContext): void {
  const vm = program.command('vm').description('create, run and manage microVMs');
  run.register(vm, ctx);
  create.register(vm, ctx);
  lifecycle.register(vm, ctx);
  set.register(vm, ctx);
  inspect.register(vm, ctx);
  access.register(vm, ctx);
  workspace.register(vm, ctx);
  session.register(vm, ctx);
  stats.register(vm, ctx);
  sync.register(vm, ctx);
  registerVmSnapshot(vm, ctx);
  registerVmFork(vm, ctx);
  inspect.registerList(program.command('ps').description('list VMs (same as `banger vm list`)'), ctx);
}

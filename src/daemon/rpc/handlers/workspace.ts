import { WorkspaceMethods } from '../../../protocol/workspace.js';
import type { WorkspaceService } from '../../services/workspace/service.js';
import { handler, type Handler } from '../server.js';

/** vm.workspace.prepare, export and compare. */
export function workspaceHandlers(workspaces: WorkspaceService): Handler[] {
  return [
    handler(WorkspaceMethods.prepare, async (p, ctx) => workspaces.prepare(p, ctx.progress, ctx.signal)),
    handler(WorkspaceMethods.export, async (p, ctx) => workspaces.export(p, ctx.signal)),
    handler(WorkspaceMethods.compare, async (p, ctx) => workspaces.compare(p, ctx.signal)),
  ];
}

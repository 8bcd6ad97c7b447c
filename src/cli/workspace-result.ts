import type { WorkspacePrepareResult } from '../protocol/workspace.js';
import { formatBytes } from '../shared/workspace-format.js';

/** What `vm workspace prepare` says on stderr once done: the daemon's notices, then what went where. */
export function preparedLines(r: WorkspacePrepareResult): string[] {
  const at = r.workspace.headCommit ? `, at ${r.workspace.headCommit.slice(0, 12)}` : '';
  const into = `${r.workspace.sourcePath} into ${r.vm}:${r.workspace.guestPath}`;
  const files = `${r.files} file${r.files === 1 ? '' : 's'}`;
  return [
    ...r.notices,
    r.mode === 'resync'
      ? `re-synced ${into} (${files} written, ${formatBytes(r.bytes)}, ${r.deleted ?? 0} deleted${at})`
      : `imported ${into} (${files}, ${formatBytes(r.bytes)}${at})`,
  ];
}

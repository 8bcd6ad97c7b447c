import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { BangerError, ErrorCode } from '../errors/index.js';

/**
 * A state directory or daemon socket this user may not open (another user's BANGER_HOME, say) is the
 * user's to fix, not a bug: say which path, whose it is, and what to do instead.
 */
export function stateAccessError(e: unknown, fallbackPath: string): BangerError | null {
  const err = e as NodeJS.ErrnoException & { address?: string };
  if (err?.code !== 'EACCES' && err?.code !== 'EPERM') return null;
  const path = err.path ?? err.address ?? fallbackPath;
  const owner = ownerOf(path);
  const me = process.getuid?.();
  const why: string[] = [];
  if (owner) why.push(`${owner.path} belongs to ${owner.name}, uid ${owner.uid}`);
  if (me !== undefined) why.push(`banger runs as uid ${me}`);
  return new BangerError(
    ErrorCode.FailedPrecondition,
    `permission denied: ${path}${why.length > 0 ? ` (${why.join('; ')})` : ''}`,
    {
      hint: 'each user has their own banger: unset BANGER_HOME to use yours (~/.local/share/banger), or point it at a directory you own',
      cause: e,
    },
  );
}

/** The owner of `path`, or of its nearest ancestor this user can stat. */
function ownerOf(path: string): { path: string; uid: number; name: string } | null {
  for (let p = path; ; p = dirname(p)) {
    try {
      const { uid } = statSync(p);
      return { path: p, uid, name: userName(uid) };
    } catch {
      if (p === dirname(p)) return null;
    }
  }
}

function userName(uid: number): string {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f.length > 2 && Number(f[2]) === uid && f[2] !== '') return f[0];
    }
  } catch {
    /* no passwd file: the number says it */
  }
  return `uid ${uid}`;
}

import { INSTALL_CHANGED_FN, shq } from '../../guest/shell.js';
import type { HostIdentity } from './host.js';

/**
 * The guest half of an identity sync as one `sh -s` script (one round trip, contents on stdin, never on a
 * command line): the git identity into root's global config, public keys appended to authorized_keys
 * (existing lines kept, none twice), each file written to a temporary name and renamed into place,
 * root-owned with its mode (`install_changed`, shared with the guest's boot). What already holds the wanted
 * value is left as it is.
 */
export function syncScript(id: Pick<HostIdentity, 'git' | 'keys' | 'files'>): string {
  const lines = ['set -eu', 'umask 077', 'export HOME=/root', INSTALL_CHANGED_FN];
  if (id.git.name !== undefined || id.git.email !== undefined) {
    const sets: string[] = [];
    // Set only when different: every start syncs, and an unchanged file is not rewritten.
    const set = (key: string, v: string) => `{ [ "$(git config --global --get ${key})" = ${shq(v)} ] || git config --global ${key} ${shq(v)}; }`;
    if (id.git.name !== undefined) sets.push(set('user.name', id.git.name));
    if (id.git.email !== undefined) sets.push(set('user.email', id.git.email));
    lines.push(`if command -v git >/dev/null 2>&1; then ${sets.join('; ')}; else echo 'no git in the guest: identity not set' >&2; fi`);
  }
  if (id.keys.length > 0) {
    lines.push(
      'mkdir -p /root/.ssh && chmod 700 /root/.ssh',
      'f=/root/.ssh/authorized_keys; touch "$f"; chmod 600 "$f"',
      // A last line without its newline would swallow the first key appended.
      'if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then echo >> "$f"; fi',
    );
    for (const k of id.keys) lines.push(`grep -qxF -- ${shq(k.line)} "$f" || printf '%s\\n' ${shq(k.line)} >> "$f"`);
  }
  for (const [i, f] of id.files.entries()) {
    const marker = `BANGER_SYNC_${i}_EOF`;
    lines.push(
      `p=${shq(f.guest)}; t="$p.banger-sync.$$"`,
      '(umask 022; mkdir -p "$(dirname "$p")")',
      `base64 -d > "$t" <<'${marker}'`,
      ...(f.content.toString('base64').match(/.{1,76}/g) ?? []),
      marker,
      `install_changed "$t" "$p" ${f.mode}; rm -f "$t"`,
    );
  }
  return lines.join('\n') + '\n';
}

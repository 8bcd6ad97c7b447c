import { BangerError, ErrorCode } from '../../../errors/index.js';
import { shJoin, shq } from '../../guest/shell.js';
import { GUEST_MISE_ENV, MISE_DOT_CONFIG_PREFIX, MISE_NAME_PREFIXES, MISE_VAR_PREFIXES } from '../../../protocol/mise.js';
import { validateGuestPath } from './guest-scripts.js';

// The shell line of a command run in a workspace (`vm exec`, `workspace compare --check`): entered with
// `cdToWorkspace`, under `mise exec` where the workspace's mise config may apply.

/**
 * Shell functions for the rule in protocol/mise.ts: `mise_applies`, run in the command's directory, fails only
 * when mise's config cannot apply there. Its tests cost a few milliseconds (one fork for `export -p`, a few
 * directory reads). The shell is dash through the agent and bash over SSH, whose `export -p` says `declare -x`.
 */
const MISE_APPLIES_FN = `mise_in() {
  for f in ${MISE_NAME_PREFIXES.map((p) => `"$1"/${p}*`).join(' ')} "$1"/.config/${MISE_DOT_CONFIG_PREFIX}*; do
    if [ -e "$f" ] || [ -L "$f" ]; then return 0; fi
  done
  return 1
}
mise_applies() {
  case $(unset ${Object.keys(GUEST_MISE_ENV).join(' ')}; export -p) in ${MISE_VAR_PREFIXES.flatMap((p) => [`*'export ${p}'*`, `*'declare -x ${p}'*`]).join(' | ')}) return 0 ;; esac
  if [ -e /etc/mise ] || [ -e "\${XDG_CONFIG_HOME:-\${HOME:-/root}/.config}/mise" ]; then return 0; fi
  mise_d=$PWD
  while :; do
    if mise_in "$mise_d"; then return 0; fi
    if [ "$mise_d" = / ]; then break; fi
    mise_d=\${mise_d%/*}
    mise_d=\${mise_d:-/}
  done
  mise_in "\${HOME:-/root}"
}
`;

/**
 * A command line that runs argv in the workspace: under `mise exec` when the guest has mise and its config
 * may apply there (MISE_APPLIES_FN; the project's tools and env), plainly otherwise. hasMise
 * true or false decides instead (tests). `exec` replaces the shell, so the exit status is the command's own.
 */
export function execInWorkspace(guestPath: string, argv: readonly string[], hasMise?: boolean): string {
  if (argv.length === 0) throw new BangerError(ErrorCode.InvalidArgument, 'no command given: pass a command after --');
  const cmd = shJoin(argv);
  const cd = cdToWorkspace(guestPath);
  if (hasMise === true) return `${cd}exec mise exec -- ${cmd}`;
  if (hasMise === false) return `${cd}exec ${cmd}`;
  return `${MISE_APPLIES_FN}${cd}if command -v mise >/dev/null 2>&1 && mise_applies; then exec mise exec -- ${cmd}; else exec ${cmd}; fi`;
}

/**
 * Shell that enters the workspace, or fails as `cd` does (exit 2) with a message that says what to do when the
 * directory is gone (removed in the guest), instead of the shell's own, which names a line of this script.
 */
export function cdToWorkspace(guestPath: string): string {
  validateGuestPath(guestPath);
  return `cd ${shq(guestPath)} 2>/dev/null || { printf '%s\\n' ${shq(`banger: the workspace ${guestPath} is not in the guest any more: import it again with \`banger vm workspace prepare VM REPO\`, or run the command elsewhere with \`vm exec -w DIR\``)} >&2; exit 2; }\n`;
}

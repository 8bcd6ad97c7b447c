/**
 * The bash completion script (also zsh's, through bashcompinit). The command tree is a `case` table in
 * `_banger_spec`; `_banger` walks the words before the cursor to find the command, the option whose value
 * is being typed, or the position of the argument, and only then asks `banger __complete` for names.
 * Completing a command word or a flag therefore runs no banger process at all.
 *
 * Every word offered is matched against the typed prefix with `case`, never through `compgen -W` (which
 * would expand `$(...)` in a name).
 */
import type { CompletionNode } from './spec.js';

/** One `case` arm per node, its spellings as alternatives. */
function specArm(n: CompletionNode): string {
  const vflags = n.valueFlags.map((v) => `${v.flag}=${v.kind}`).join(' ');
  const pattern = n.spellings.map((s) => `'${s}'`).join('|');
  return (
    `    ${pattern})\n` +
    `      _banger_subs='${n.subcommands.join(' ')}'\n` +
    `      _banger_flags='${n.flags.join(' ')}'\n` +
    `      _banger_vflags='${vflags}'\n` +
    `      _banger_args='${n.args.join(' ')}' ;;`
  );
}

/** The functions shared by bash and zsh. */
export function bashFunctions(nodes: readonly CompletionNode[]): string {
  return `# The command tree: sets _banger_subs/_flags/_vflags/_args for a command path ('' = banger itself).
_banger_spec() {
  case "$1" in
${nodes.map(specArm).join('\n')}
    *) return 1 ;;
  esac
}

# Adds the words among "$@" that start with what is typed.
_banger_add() {
  local w
  for w in "$@"; do
    case "$w" in "$_banger_cur"*) COMPREPLY+=("$w") ;; esac
  done
}

# Completes a value of kind $1 (vm, vm:running, vm:stopped, image, session, one-of:a,b, files); $2 = the VM
# a session belongs to. Names come from a running daemon; none (and no daemon start) when it is not running.
_banger_kind() {
  local kind=\${1%...} w what arg
  case "$kind" in
    one-of:*)
      local IFS=,
      _banger_add \${kind#one-of:}
      ;;
    vm | vm:* | image | session)
      what=\${kind%%:*}
      arg=''
      case "$kind" in
        vm) arg=any ;;
        vm:*) arg=\${kind#vm:} ;;
        session) arg=$2; [ -n "$arg" ] || return 0 ;;
      esac
      while IFS= read -r w; do
        _banger_add "$w"
      done < <("$_banger_prog" __complete "$what" \${arg:+"$arg"} 2>/dev/null)
      ;;
    *)
      if [ -n "\${ZSH_VERSION-}" ]; then
        setopt local_options null_glob
        COMPREPLY=("$_banger_cur"*)
      else
        compopt -o default 2>/dev/null
        COMPREPLY=()
      fi
      ;;
  esac
}

_banger() {
  [ -n "\${ZSH_VERSION-}" ] && setopt local_options ksh_arrays sh_word_split
  local _banger_prog=\${COMP_WORDS[0]:-banger} _banger_cur=\${COMP_WORDS[COMP_CWORD]}
  local _banger_subs _banger_flags _banger_vflags _banger_args
  local cmdpath='' w t i j n last skip='' dashdash='' kind='' vm=''
  local -a pos=() args=()
  COMPREPLY=()
  _banger_spec ''
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    if [ -n "$skip" ]; then skip=''; continue; fi
    if [ -n "$dashdash" ]; then pos+=("$w"); continue; fi
    case "$w" in
      --) dashdash=1; continue ;;
      -*=*) continue ;;
      -*)
        for t in $_banger_vflags; do [ "\${t%%=*}" = "$w" ] && skip=\${t#*=}; done
        continue
        ;;
    esac
    if [ -n "$_banger_subs" ] && [ \${#pos[@]} -eq 0 ] && _banger_spec "\${cmdpath:+$cmdpath }$w"; then
      cmdpath=\${cmdpath:+$cmdpath }$w
    else
      pos+=("$w")
    fi
  done
  # The value of an option (--image <TAB>).
  if [ -n "$skip" ]; then _banger_kind "$skip"; return 0; fi
  case "$_banger_cur" in
    -*=*) return 0 ;;
    -*) [ -z "$dashdash" ] && _banger_add $_banger_flags; return 0 ;;
  esac
  # After --: the guest command.
  if [ -n "$dashdash" ]; then _banger_kind files; return 0; fi
  if [ -n "$_banger_subs" ] && [ \${#pos[@]} -eq 0 ]; then _banger_add $_banger_subs; return 0; fi
  args=($_banger_args)
  n=\${#pos[@]}
  last=$((\${#args[@]} - 1))
  [ "$last" -ge 0 ] || return 0
  if [ "$n" -le "$last" ]; then
    kind=\${args[n]}
  elif [ "\${args[last]%...}" != "\${args[last]}" ]; then
    kind=\${args[last]}
  else
    return 0
  fi
  for ((j = 0; j < n; j++)); do
    case "\${args[j]}" in vm*) vm=\${pos[j]} ;; esac
  done
  _banger_kind "$kind" "$vm"
}`;
}

export function bashScript(nodes: readonly CompletionNode[]): string {
  return `# bash completion for banger, made by \`banger completion bash\` (make it again after upgrading banger).
${bashFunctions(nodes)}

complete -F _banger banger
`;
}

export function zshScript(nodes: readonly CompletionNode[]): string {
  return `# zsh completion for banger, made by \`banger completion zsh\` (make it again after upgrading banger).
# It runs the bash completion through zsh's bashcompinit.
if ! whence compdef >/dev/null 2>&1; then
  autoload -Uz compinit && compinit
fi
autoload -U +X bashcompinit && bashcompinit
${bashFunctions(nodes)}

complete -F _banger banger
`;
}

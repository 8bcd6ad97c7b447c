/**
 * The fish completion script: the same walk as the bash one (bash.ts) written in fish, with the command tree
 * as a `switch` in `__banger_spec`. fish matches what is offered against the typed token itself.
 */
import type { CompletionNode } from './spec.js';

function specArm(n: CompletionNode): string {
  const line = (words: readonly string[]) => `'${words.length ? words.join(' ') : '-'}'`;
  const vflags = n.valueFlags.map((v) => `${v.flag}=${v.kind}`);
  return (
    `        case ${n.spellings.map((s) => `'${s}'`).join(' ')}\n` +
    `            printf '%s\\n' ${line(n.subcommands)} ${line(n.flags)} ${line(vflags)} ${line(n.args)}`
  );
}

export function fishScript(nodes: readonly CompletionNode[]): string {
  return `# fish completion for banger, made by \`banger completion fish\` (make it again after upgrading banger).

# The command tree: subcommands, flags, value flags, arguments of a command path ('' = banger itself),
# one line each ('-' when empty); status 1 for no such command.
function __banger_spec
    switch "$argv[1]"
${nodes.map(specArm).join('\n')}
        case '*'
            return 1
    end
end

# Prints the values of kind $argv[2] (vm, vm:running, vm:stopped, image, session, one-of:a,b, files);
# $argv[3] = the VM a session belongs to. Names come from a running daemon; none when it is not running.
function __banger_kind --argument-names prog kind vm
    set kind (string replace -r '\\.\\.\\.$' '' -- $kind)
    switch $kind
        case 'one-of:*'
            string split , -- (string replace 'one-of:' '' -- $kind)
        case vm 'vm:*' image session
            set -l what (string split -m1 : -- $kind)[1]
            set -l arg
            switch $kind
                case vm
                    set arg any
                case 'vm:*'
                    set arg (string replace 'vm:' '' -- $kind)
                case session
                    test -n "$vm"; or return 0
                    set arg $vm
            end
            $prog __complete $what $arg 2>/dev/null
        case '*'
            __fish_complete_path (commandline -ct)
    end
end

function __banger_complete
    set -l words (commandline -opc)
    set -l prog $words[1]
    set -e words[1]
    set -l cur (commandline -ct)
    set -l cmdpath ''
    set -l spec (__banger_spec '')
    set -l pos
    set -l skip ''
    set -l dashdash 0
    for w in $words
        if test -n "$skip"
            set skip ''
            continue
        end
        if test $dashdash = 1
            set -a pos $w
            continue
        end
        switch $w
            case '--'
                set dashdash 1
                continue
            case '-*=*'
                continue
            case '-*'
                for t in (string split ' ' -- $spec[3])
                    set -l kv (string split -m1 = -- $t)
                    test "$kv[1]" = "$w"; and set skip $kv[2]
                end
                continue
        end
        set -l next
        if test "$spec[1]" != '-'; and test (count $pos) -eq 0; and set next (__banger_spec (string trim -- "$cmdpath $w"))
            set cmdpath (string trim -- "$cmdpath $w")
            set spec $next
        else
            set -a pos $w
        end
    end
    if test -n "$skip"
        __banger_kind $prog $skip
        return 0
    end
    switch $cur
        case '-*=*'
            return 0
        case '-*'
            test $dashdash = 0; and string split ' ' -- $spec[2]
            return 0
    end
    if test $dashdash = 1
        __banger_kind $prog files
        return 0
    end
    if test "$spec[1]" != '-'; and test (count $pos) -eq 0
        string split ' ' -- $spec[1]
        return 0
    end
    test "$spec[4]" = '-'; and return 0
    set -l args (string split ' ' -- $spec[4])
    set -l n (count $pos)
    set -l kind
    if test $n -lt (count $args)
        set kind $args[(math $n + 1)]
    else if string match -q -- '*...' $args[-1]
        set kind $args[-1]
    else
        return 0
    end
    set -l vm ''
    for j in (seq 1 $n)
        if test $j -le (count $args); and string match -q -- 'vm*' $args[$j]
            set vm $pos[$j]
        end
    end
    __banger_kind $prog $kind $vm
end

complete -c banger -e
complete -c banger -f -a '(__banger_complete)'
`;
}

import type { VmInfo, VmPorts, VmSyncInfo } from '../../../protocol/vm.js';
import { table } from '../../output.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';

export function vmTable(vms: VmInfo[]): string {
  return table(
    ['NAME', 'STATE', 'IMAGE', 'VMM', 'CPUS', 'MEMORY', 'ADDRESS', 'PORTS', 'WORKSPACE', 'AGE'],
    vms.map((v) => [
      v.name,
      v.problem ? `${v.state}!` : v.state,
      v.image,
      v.accel ? `${v.vmm}/${v.accel}` : v.vmm,
      String(v.vcpus),
      `${v.memoryMib}M`,
      v.network.hostAddress,
      forwardedList(v),
      v.workspace ? v.workspace.guestPath : '-',
      age(v.createdAt),
    ]),
  );
}

export function vmDetails(v: VmInfo): string {
  const rows: [string, string][] = [
    ['Name', v.name],
    ['ID', v.id],
    ['State', v.state],
    ['Image', v.image],
    ['VMM', `${v.vmm}${v.accel ? ` (${v.accel === 'tcg' ? 'software emulation, TCG' : 'KVM'})` : ''}`],
    ['CPUs', String(v.vcpus)],
    ['Memory', `${v.memoryMib} MiB`],
    ['Work disk', `${v.diskSizeMib} MiB (mounted at /root)`],
    ...v.disks.map((d): [string, string] => [
      `Disk ${d.id}`,
      `${mib(d.virtualBytes)} virtual, ${mib(d.hostBytes)} used on the host (${d.path})`,
    ]),
    ['Network', `${v.network.mode}, guest ${v.network.guestAddress}, egress ${v.network.egress ? 'allowed' : 'off'}`],
    ['Address', v.network.hostAddress],
    ['DNS name', `${v.dnsName} (banger dns install makes it resolve on the host)`],
    ['SSH', `${v.network.hostAddress}:${v.network.sshPort} (banger vm ssh ${v.name}, or ssh ${v.dnsName})`],
    [
      'Ports',
      `${forwardedList(v)}${
        v.network.portWatch === 'agent'
          ? ' (new guest ports pushed by the guest agent)'
          : v.network.portWatch === 'ssh'
            ? ' (new guest ports polled over SSH)'
            : ''
      }`,
    ],
    ['PID', v.pid === null ? '-' : String(v.pid)],
    [
      'Channel',
      v.channel === null
        ? '-'
        : v.channel === 'agent'
          ? 'guest agent (vm exec, sessions, stats); ssh for vm ssh'
          : v.agent
            ? 'ssh (the image has no guest agent: rebuild it for sessions and stats)'
            : 'ssh (created with --no-agent: no sessions or stats)',
    ],
    ['Created', v.createdAt],
    ['Started', v.startedAt ?? '-'],
    ['Directory', v.dir],
  ];
  if (v.workspace) {
    const w = v.workspace;
    rows.push(['Workspace', `${w.guestPath} (from ${w.sourcePath})`]);
    rows.push([
      'Imported',
      `${w.preparedAt}, host HEAD ${w.headCommit ?? '(no commits)'}${w.includeUntracked ? ', untracked files included' : ''}`,
    ]);
  } else rows.push(['Workspace', '-']);
  rows.push(['Synced', v.synced ? `${v.synced.at}: ${syncSummary(v.synced)}` : '-']);
  // Both can quote what the guest printed or reported.
  if (v.lastError) rows.push(['Last error', escapeForTerminal(v.lastError)]);
  if (v.problem) rows.push(['Problem', escapeForTerminal(v.problem)]);
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, val]) => `${(k + ':').padEnd(w + 1)} ${val}`).join('\n');
}

/** What an identity sync copied, in one line: names and paths, never contents. */
export function syncSummary(s: VmSyncInfo): string {
  const parts: string[] = [];
  if (s.git.length > 0) parts.push(`git ${s.git.join(', ')}`);
  if (s.sshKeys.length > 0) parts.push(`ssh keys ${s.sshKeys.join(', ')}`);
  for (const f of s.files) parts.push(`${f.host} -> ${f.guest} (${f.mode})`);
  if (s.warnings.length > 0) parts.push(`${s.warnings.length} warning${s.warnings.length === 1 ? '' : 's'}`);
  return escapeForTerminal(parts.length > 0 ? parts.join('; ') : 'nothing (no git identity, keys or configured files found)');
}

/** `vm ports` for a person; the guest reports addresses and process names, so they are escaped. */
export function portsTable(r: VmPorts): string {
  return table(
    ['PORT', 'BOUND TO', 'PROCESS', 'URL'],
    r.ports.map((p) => [
      String(p.port),
      escapeForTerminal(p.address),
      p.process === null ? '-' : escapeForTerminal(p.process),
      p.url === null ? '(guest loopback only: not reachable from the host)' : escapeForTerminal(p.url),
    ]),
  );
}

/** The forwarded ports: SSH always, plus what the guest listens on while it runs. */
function forwardedList(v: VmInfo): string {
  const ports = [`${v.network.sshPort}->22`, ...v.network.forwardedPorts.map(String)];
  return v.state === 'running' ? ports.join(',') : '-';
}

function mib(bytes: number): string {
  const m = bytes / (1024 * 1024);
  return `${m < 10 ? m.toFixed(1) : Math.round(m)} MiB`;
}

function age(iso: string): string {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/**
 * `dns install` for a daemon that is not root: it would edit system state (/etc/hosts, or a link and
 * systemd-resolved's settings), so it refuses before touching anything and names the one root command
 * that routes `.vm` to this user's DNS server through systemd-resolved. That command's settings are
 * runtime state (lost at reboot) and belong to root: `banger dns uninstall` cannot undo them either;
 * `sudo ip link del LINK` does.
 */
import { BangerError, ErrorCode } from '../../../errors/index.js';
import { shq } from '../../guest/shell.js';

/** The dummy link for `uid`'s daemon: within the 15 characters Linux allows for any uid. */
export function userDnsLink(uid: number): string {
  return `bdns-${uid}`;
}

/** The shell command (run as root) that sends `.vm` queries to `address:port` through systemd-resolved. */
export function rootDnsCommand(p: { address: string; port: number; uid: number }): string {
  const link = userDnsLink(p.uid);
  const server = p.port === 53 ? p.address : `${p.address}:${p.port}`;
  const script = [
    `ip link show dev ${link} >/dev/null 2>&1 || ip link add ${link} type dummy`,
    `ip addr replace ${p.address}/32 dev ${link} scope global`,
    `ip link set ${link} up`,
    `resolvectl dns ${link} ${server}`,
    `resolvectl domain ${link} '~vm'`,
    `resolvectl default-route ${link} false`,
  ].join(' && ');
  return `sudo sh -c ${shq(script)}`;
}

/** The refusal `dns install` gives a normal user's daemon. */
export function userDnsInstallRefused(p: { address: string; port: number; uid: number }): BangerError {
  return new BangerError(
    ErrorCode.FailedPrecondition,
    `dns install edits system files and settings (/etc/hosts or systemd-resolved), and this daemon runs as uid ${p.uid}, not root: nothing was changed`,
    {
      hint:
        `with systemd-resolved running, root can route .vm to your daemon's DNS server (${p.address}:${p.port}) with: ` +
        `${rootDnsCommand(p)}  (undo: sudo ip link del ${userDnsLink(p.uid)}). ` +
        'Without it, `banger vm ssh NAME` and `banger ssh-config install` work with no DNS at all',
    },
  );
}

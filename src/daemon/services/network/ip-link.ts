/**
 * The `ip` commands TapNetwork (tap.ts) runs, as pure functions: the argv of each host change and the
 * parse of what `ip -j -d link show` prints. test/unit/tap.test.ts pins the argv.
 */

/** argv (for `ip`) of each host change. */
export const ipArgv = {
  show: (dev: string) => ['-j', '-d', 'link', 'show', 'dev', dev],
  slaves: (bridge: string) => ['-j', '-d', 'link', 'show', 'master', bridge],
  addBridge: (bridge: string, mac: string) => ['link', 'add', 'name', bridge, 'address', mac, 'type', 'bridge'],
  /** `replace` so re-running is harmless. */
  bridgeAddress: (bridge: string, gatewayCidr: string) => ['addr', 'replace', gatewayCidr, 'dev', bridge],
  up: (dev: string) => ['link', 'set', 'dev', dev, 'up'],
  addTap: (tap: string) => ['tuntap', 'add', 'dev', tap, 'mode', 'tap'],
  enslave: (tap: string, bridge: string) => ['link', 'set', 'dev', tap, 'master', bridge],
  isolate: (tap: string) => ['link', 'set', 'dev', tap, 'type', 'bridge_slave', 'isolated', 'on'],
  /** Deletes by netlink, which also works while a VMM still holds the tap open. */
  del: (dev: string) => ['link', 'del', 'dev', dev],
};

/** One interface as `ip -j -d link show` describes it (the fields banger reads). */
export interface LinkJson {
  ifname: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string; info_slave_kind?: string; info_slave_data?: { isolated?: boolean } };
}

/** The interfaces in `ip -j` output; none for empty or unparseable output. */
export function parseLinks(stdout: string): LinkJson[] {
  const text = stdout.trim();
  if (!text) return [];
  try {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? (v as LinkJson[]) : [];
  } catch {
    return [];
  }
}

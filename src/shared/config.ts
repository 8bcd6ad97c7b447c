import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { BangerError, ErrorCode } from '../errors/index.js';
import { NETWORK_MODES } from '../protocol/common.js';
import { interfaceNameSchema } from '../protocol/names.js';
import { userNetworkDefaults } from './user-network.js';

/**
 * The daemon's configuration: `$BANGER_HOME/config.json`, every key optional. Defaults are applied here
 * and nowhere else; a bad value is refused with an error naming its key.
 */
const schema = z
  .object({
    network: z
      .object({
        /** How new VMs are networked unless `--network` says otherwise. */
        defaultMode: z.enum(NETWORK_MODES).default('loopback'),
        tap: z
          .object({
            bridge: interfaceNameSchema.default('banger0'),
            subnet: z
              .string()
              .regex(/^\d{1,3}(\.\d{1,3}){3}\/(1[6-9]|2[0-9])$/, 'an IPv4 CIDR between /16 and /29, e.g. 172.30.0.0/24')
              .default('172.30.0.0/24'),
          })
          .strict()
          .default({}),
      })
      .strict()
      .default({}),
    dns: z
      .object({
        address: z.string().ip({ version: 'v4' }).default('127.77.0.1'),
        port: z.number().int().min(1).max(65535).default(53),
      })
      .strict()
      .default({}),
    /** How long a boot may take; raise it on a slow or heavily loaded host (software emulation). */
    boot: z
      .object({
        /** Until the guest answers SSH. */
        timeoutSeconds: z.number().positive().max(3600).default(180),
        /** A guest that prints nothing on its console for this long is started again, once. */
        silentSeconds: z.number().positive().max(3600).default(45),
      })
      .strict()
      .default({}),
    qemu: z
      .object({
        /**
         * TCG's translated-code cache per software-emulated VM, in MiB (QEMU's `tb-size`; unused under KVM).
         * QEMU frees translated code only by emptying the whole cache once it is full, so a VM's share of it
         * grows to whatever size it is given, and a guest fills it fast. Measured here (768 MiB guest, a
         * minute after boot, PSS of QEMU): QEMU's own default of 1 GiB 911-926 MiB (546-550 of it code),
         * 512 MiB 851, 256 MiB 577, 128 MiB 422-430, 64 MiB 356, 32 MiB 308. Cold boot and a guest workload
         * (node, git, apt-cache) took the same time from 1 GiB down to 128 MiB, within the run-to-run spread;
         * at 32 MiB both were ~20% slower. bench/tcg-cache.ts repeats the comparison.
         */
        tcgCacheMib: z.number().int().min(16).max(4096).default(128),
        /**
         * Whether a software-emulated guest randomizes where it maps each process (ASLR). Off by default: TCG
         * translates a library's code again for every address it is mapped at, so with randomization each new
         * process in the guest starts cold. Measured here: `/bin/true` 24-25 ms per process with it, 5.5 ms
         * without; `ssh VM true` 90 ms against 40 ms. The guest is the sandbox (what runs in it already runs
         * code of its choosing), so this gives up a hardening inside it, not the isolation from the host. Set
         * it to true to keep ASLR in TCG guests; guests under KVM always keep it.
         */
        tcgGuestAslr: z.boolean().default(false),
      })
      .strict()
      .default({}),
    /**
     * Files copied into every VM at start and by `banger vm sync` (credentials a coding agent needs, say).
     * `host` may start with `~/` (the invoking user's home); a link that leads out of that home is refused
     * unless `followLinks` is set. `guest` is absolute; the copy is root-owned with `mode`.
     */
    sync: z
      .array(
        z
          .object({
            host: z.string().min(1),
            guest: z
              .string()
              .regex(/^\/[^\0]*$/, 'an absolute guest path, e.g. /root/.config/gh/hosts.yml')
              .refine((p) => !p.split('/').includes('..'), 'a guest path without ".."'),
            mode: z
              .string()
              .regex(/^0?[0-7]{3}$/, 'an octal mode, e.g. "0600"')
              .default('0600'),
            followLinks: z.boolean().default(false),
          })
          .strict(),
      )
      .default([]),
  })
  .strict();

export type BangerConfig = z.infer<typeof schema>;
export type SyncEntry = BangerConfig['sync'][number];

export const DEFAULT_CONFIG: BangerConfig = schema.parse({});

/**
 * Validates a parsed config object; the error names the first bad key. `uid`: the daemon's; a normal
 * user's DNS defaults are its own address and a high port (user-network.ts), root's 127.77.0.1:53.
 */
export function parseConfig(raw: unknown, source = 'config.json', uid = 0): BangerConfig {
  const r = schema.safeParse(withUserDefaults(raw ?? {}, uid));
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const key = issue.path.join('.') || '(top level)';
  throw new BangerError(ErrorCode.InvalidArgument, `${source}: ${key}: ${issue.message}`, {
    hint: `fix or remove that key in ${source}`,
  });
}

/** `raw` with the DNS defaults of `uid` filled in where it gives none (root's are the schema's own). */
function withUserDefaults(raw: unknown, uid: number): unknown {
  if (uid === 0 || typeof raw !== 'object' || raw === null || Array.isArray(raw)) return raw;
  const r = raw as Record<string, unknown>;
  const dns = r.dns ?? {};
  if (typeof dns !== 'object' || dns === null || Array.isArray(dns)) return raw;
  const d = userNetworkDefaults(uid);
  return { ...r, dns: { address: d.dnsAddress, port: d.dnsPort, ...dns } };
}

/** Reads the config file; a missing file means all defaults (for `uid`, see parseConfig). */
export function loadConfig(path: string, uid = 0): BangerConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return parseConfig({}, path, uid);
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new BangerError(ErrorCode.InvalidArgument, `${path} is not valid JSON: ${(e as Error).message}`, {
      hint: `fix it, or remove it to use the defaults`,
    });
  }
  return parseConfig(raw, path, uid);
}

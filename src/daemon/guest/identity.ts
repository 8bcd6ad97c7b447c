import { PassThrough, Writable } from 'node:stream';
import { BangerError, ErrorCode } from '../../errors/index.js';
import { MAC_RE, VM_NAME_RE } from '../../protocol/names.js';
import type { AgentGuestSession } from './agent-session.js';
import type { GuestExecResult } from './session.js';
import { shq } from './shell.js';

/** A tap guest's own place on the bridge: its NIC's MAC, its address with prefix, and the gateway. */
export interface GuestTapIdentity {
  mac: string;
  ipCidr: string;
  gateway: string;
}

/**
 * What a resumed guest is given to become a VM of its own. A warm pool's hand-over gives the clock and the
 * name; a restore from a snapshot gives all of it; a cold boot, the clock alone (its RTC holds whole seconds).
 */
export interface GuestIdentity {
  /** The VM's name: kernel hostname, /etc/hostname, and banger's line in /etc/hosts. */
  name?: string;
  /**
   * Set the wall clock, which stood still while the VM was parked or saved (or came from the RTC, in whole
   * seconds). The host's time is read when the guest program asks for it, not when the command is made (a
   * process start in a freshly resumed guest takes up to seconds), and half the exchange's round trip is added.
   */
  clock?: boolean;
  /**
   * How many times the clock's exchange is made (default 1); the fastest counts. Each costs a round trip
   * (100-200 ms in a guest just resumed here), and buys precision over a channel still slow from its start: a
   * cold boot's agent took 0.5 s one way for its first.
   */
  clockExchanges?: number;
  /** 32 hex digits for /etc/machine-id. */
  machineId?: string;
  /** Host bytes (hex) written to /dev/urandom, then RNDRESEEDCRNG, so the next read in the guest uses them. */
  seedHex?: string;
  /**
   * The guest's new SSH host key (OpenSSH private key, and its one-line public key). sshd is told to reload
   * only where it must be: its reload under emulation cost a fork ~0.2 s of host CPU (see IDENTITY_PL).
   */
  hostKey?: { private: Buffer; public: Buffer };
  /** Under tap networking: the NIC's new MAC, address and route (the old ones are its source's). */
  tap?: GuestTapIdentity;
}

/**
 * The one guest program that applies an identity (perl-base is in every Debian system). One process, started
 * by the agent with no shell: each process start costs tens to hundreds of milliseconds in an emulated guest
 * whose code cache is empty, as a freshly restored one's is, and four forks do this side by side on the
 * host's cores. It says `ready` once it runs, and then reads the host's time and the host key on stdin (never
 * in argv): with the clock, it says `ready` and reads one time per exchange asked for, timing each on its
 * monotonic clock (clock_gettime(2), x86_64: 228), and the rest follows the last time. The clock is set first
 * (it is the value that ages), through clock_settime(2) (x86_64: 227), to the time of the fastest exchange plus
 * half its round trip plus what passed since.
 * Files are replaced by rename, never half-written. `root=DIR` (tests only) prefixes every path, and puts the
 * clock into DIR/clock instead of setting it.
 */
const IDENTITY_PL = String.raw`
use strict; use warnings;
my %a = map { split(/=/, $_, 2) } @ARGV;
my $root = $a{root} // '';
umask 077;
sub put { my ($path, $mode, $data) = @_; my $tmp = "$path.banger-new";
  open(my $f, '>', $tmp) or die "$tmp: $!\n"; chmod($mode, $tmp) or die "chmod $tmp: $!\n";
  print $f $data or die "$tmp: $!\n"; close($f) or die "$tmp: $!\n";
  rename($tmp, $path) or die "rename $tmp: $!\n"; }
sub mono { my $t = pack('q q', 0, 0); syscall(228, 1, $t) == 0 or die "clock_gettime: $!\n";
  my ($s, $n) = unpack('q q', $t); return $s * 1000 + $n / 1e6; }
# What the host sends on stdin (its time, once per ready line, then the host key), asked for once this program runs.
my ($ms, $pub, $key) = ('', '', '');
$| = 1;
# args=- : the program was started ahead (held in a snapshot's guest) and reads its arguments here, hex-encoded.
if (($a{args} // '') eq '-') { print "ready\n"; my $l = <STDIN> // '';
  $l =~ /^([a-z_]+=(?:[0-9a-f]{2})*(?: [a-z_]+=(?:[0-9a-f]{2})*)*)\n$/ or die "no arguments on stdin\n";
  for (split(/ /, $1)) { my ($k, $v) = split(/=/, $_, 2); $a{$k} = pack('H*', $v); } }
# name=- : the program was started ahead (a warm pool's, before parking) and waits here for its name.
if (($a{name} // '') eq '-') { print "ready\n"; my $n = <STDIN> // '';
  $n =~ /^([A-Za-z0-9][A-Za-z0-9.-]*)\n$/ or die "no name on stdin\n"; $a{name} = $1; }
if ($a{clock}) { my ($rtt, $at);
  for (1 .. $a{clock}) { my $t1 = mono(); print "ready\n"; my $l = <STDIN> // ''; my $t4 = mono();
    $l =~ /^(\d+)\n$/ or die "no clock on stdin\n";
    ($rtt, $at, $ms) = ($t4 - $t1, $t4, $1) if !defined $rtt || $t4 - $t1 < $rtt; }
  $ms += $rtt / 2 + (mono() - $at);
  if (length $root) { put("$root/clock", 0644, int($ms) . "\n"); }
  else { my $s = int($ms / 1000); syscall(227, 0, pack('q q', $s, int(($ms - $s * 1000) * 1e6))) == 0 or die "clock_settime: $!\n"; } }
elsif ($a{keys}) { print "ready\n"; }
if ($a{keys}) { local $/; my $in = <STDIN> // ''; ($pub, $key) = split(/\n/, $in, 2); }
if (defined $a{seed}) { open(my $r, '>', '/dev/urandom') or die "urandom: $!\n";
  syswrite($r, pack('H*', $a{seed})) or die "urandom write: $!\n";
  ioctl($r, 0x5207, 0) or die "RNDRESEEDCRNG: $!\n"; close($r); }
if (defined $a{ip}) { open(my $ip, '|-', 'ip', '-batch', '-') or die "ip: $!\n"; print $ip $a{ip};
  close($ip) or die "ip -batch failed (status $?)\n"; }
if (defined(my $name = $a{name})) {
  open(my $k, '>', "$root/proc/sys/kernel/hostname") or die "hostname: $!\n"; print $k "$name\n";
  close($k) or die "hostname: $!\n";
  put("$root/etc/hostname", 0644, "$name\n");
  my $hosts = '';
  if (open(my $h, '<', "$root/etc/hosts")) { while (my $l = <$h>) { chomp $l; $hosts .= "$l\n" unless $l =~ /# banger$/; } close($h); }
  put("$root/etc/hosts", 0644, $hosts . "127.0.1.1 $name # banger\n"); }
put("$root/etc/machine-id", 0444, "$a{machine_id}\n") if defined $a{machine_id};
if ($a{keys}) { die "no host key on stdin\n" unless defined $key && length $key;
  put("$root/etc/ssh/ssh_host_ed25519_key", 0600, $key);
  put("$root/etc/ssh/ssh_host_ed25519_key.pub", 0644, "$pub\n");
  # Debian OpenSSH before 9.8 (no sshd-session) loads the host key afresh in the sshd it executes for each
  # connection: the new key is served without a reload. From 9.8 the listener loads it and hands it to
  # sshd-session, so the listener is told to reload (it executes itself again). Any other layout: reload.
  my $ssh = "$root/usr/lib/openssh";
  if ((-e "$ssh/sshd-session" || !-d $ssh) && open(my $p, '<', "$root/run/sshd.pid")) {
    my $pid = <$p> // ''; kill('HUP', $1) if $pid =~ /^(\d+)/; } }
`;

/** How to run {@link IDENTITY_PL}: its argv (no shell), the same as a shell line, and its stdin. */
export interface IdentityCommand {
  argv: string[];
  shellLine: string;
  /**
   * What goes to its stdin for its `ready` number `n` (1-based; the clock's line is the host's time when this
   * is called), and whether that is the last of it.
   */
  input?: (n: number) => { data: Buffer; last: boolean };
}

/**
 * The command that gives a resumed guest `id`. With `nameOnStdin` (a program started ahead, see
 * {@link prestartIdentity}) its first `ready` asks for the name, which then goes on its stdin.
 */
export function identityCommand(id: GuestIdentity, opts: { nameOnStdin?: boolean; argsOnStdin?: boolean } = {}): IdentityCommand {
  const args: string[] = [];
  if (opts.nameOnStdin) args.push('name=-');
  else if (id.name !== undefined) args.push(`name=${checked(id.name, VM_NAME_RE, 'name')}`);
  const rounds = id.clock ? (id.clockExchanges ?? 1) : 1;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9) throw new BangerError(ErrorCode.Internal, `bad clock exchanges ${rounds}`);
  if (id.clock) args.push(`clock=${rounds}`);
  if (id.seedHex !== undefined) args.push(`seed=${checked(id.seedHex, /^(?:[0-9a-f]{2})+$/, 'seed')}`);
  if (id.machineId !== undefined) args.push(`machine_id=${checked(id.machineId, /^[0-9a-f]{32}$/, 'machine-id')}`);
  if (id.tap) args.push(`ip=${tapBatch(id.tap)}`);
  if (id.hostKey) args.push('keys=1');
  const argv = opts.argsOnStdin ? [...PRESPAWNED_IDENTITY.argv] : ['perl', '-e', IDENTITY_PL, '--', ...args];
  const key = id.hostKey;
  const pub = key?.public.toString('utf8').trim();
  if (pub?.includes('\n')) throw new BangerError(ErrorCode.Internal, 'the public host key is not one line');
  const input =
    id.clock || key
      ? (n: number) => {
          const last = n >= rounds;
          const text = `${id.clock ? `${Date.now()}\n` : ''}${last && key ? `${pub}\n` : ''}`;
          return { data: Buffer.concat([Buffer.from(text), (last && key?.private) || Buffer.alloc(0)]), last };
        }
      : undefined;
  const shellLine = argv.map(shq).join(' ');
  if (!opts.argsOnStdin) return { argv, shellLine, input };
  // Its first `ready` asks for the arguments, as k=HEX words on one line.
  const hexed = args.map((a) => {
    const eq = a.indexOf('=');
    return `${a.slice(0, eq)}=${Buffer.from(a.slice(eq + 1)).toString('hex')}`;
  });
  const line = `${hexed.join(' ')}\n`;
  const first = { data: Buffer.from(line), last: input === undefined };
  return { argv, shellLine, input: (n) => (n === 1 ? first : input!(n - 1)) };
}

/**
 * The identity program as a snapshot's guest holds it (AgentClient.prespawn): started before the source is
 * saved, it waits for its arguments, so a VM restored from the snapshot skips the program's start (~0.4 s of
 * a restore's identity step in a guest whose code cache is empty, more with four forks on two host cores).
 */
export const PRESPAWNED_IDENTITY: { key: string; argv: readonly string[] } = {
  key: 'identity',
  argv: ['perl', '-e', IDENTITY_PL, '--', 'args=-'],
};

type IdentityGuest = Pick<AgentGuestSession, 'execArgv'>;
type IdentityExec = (o: { signal?: AbortSignal; stdin: PassThrough; stdout: Writable }) => Promise<GuestExecResult>;
/** Runs `c` as a new process through `guest`. */
const viaExecArgv = (guest: IdentityGuest, c: IdentityCommand): IdentityExec => (o) => guest.execArgv(c.argv, '/', c.shellLine, o);

/** Gives the guest behind `guest` the identity `id`; throws with the guest's message when it fails. */
export async function applyIdentity(guest: IdentityGuest, id: GuestIdentity, signal?: AbortSignal): Promise<void> {
  const c = identityCommand(id);
  await runIdentity(viaExecArgv(guest, c), c, signal).done;
}

/**
 * {@link applyIdentity} through the program a snapshot's guest holds ({@link PRESPAWNED_IDENTITY}), else (an
 * agent without it, or none held) through a new one. Says which it was.
 */
export async function applyIdentityHeld(
  guest: IdentityGuest & Pick<AgentGuestSession, 'execPrespawned'>,
  id: GuestIdentity,
  signal?: AbortSignal,
): Promise<'held' | 'started'> {
  const c = identityCommand(id, { argsOnStdin: true });
  try {
    await runIdentity((o) => guest.execPrespawned(PRESPAWNED_IDENTITY.key, o), c, signal).done;
    return 'held';
  } catch (e) {
    if (signal?.aborted) throw e;
    await applyIdentity(guest, id, signal);
    return 'started';
  }
}

/** An identity program started ahead, waiting for its name. */
export interface PendingIdentity {
  /** Gives it the VM's name (and the host's time, as it asks); resolves once the identity is applied. */
  finish(name: string): Promise<void>;
}

/**
 * Starts the identity program for `id` (all but the name) and resolves once it runs and waits for the name.
 * A warm pool starts it in each VM before parking it, so that its take only answers a running program: a
 * process start is the largest part of a take under emulation (~0.3-0.5 s here). The program's time is asked
 * for after the name, so a clock exchange never spans the park.
 */
export async function prestartIdentity(guest: IdentityGuest, id: Omit<GuestIdentity, 'name'>, signal?: AbortSignal): Promise<PendingIdentity> {
  let give!: (name: string) => void;
  const name = new Promise<string>((resolve) => (give = resolve));
  const c = identityCommand(id, { nameOnStdin: true });
  const run = runIdentity(viaExecArgv(guest, c), c, signal, name);
  run.done.catch(() => undefined); // seen through finish(), or through ready when it fails first
  await run.ready;
  return {
    async finish(n) {
      give(checked(n, VM_NAME_RE, 'name'));
      await run.done;
    },
  };
}

/**
 * Runs an identity command, answering each `ready` line it prints as it comes: with the name once `name`
 * resolves (for a program started ahead, its first), else with what `c.input` gives. `ready` resolves at the
 * first line, and rejects when the program ends before one.
 */
function runIdentity(
  exec: IdentityExec,
  c: IdentityCommand,
  signal?: AbortSignal,
  name?: Promise<string>,
): { ready: Promise<void>; done: Promise<void> } {
  const stdin = new PassThrough();
  const input = c.input;
  let readies = 0;
  let sawReady!: () => void;
  const ready = new Promise<void>((resolve) => (sawReady = resolve));
  const answer = (n: number) => {
    if (stdin.writableEnded) return;
    if (name && n === 1) {
      void name.then((v) => {
        if (stdin.writableEnded) return;
        if (input) stdin.write(`${v}\n`);
        else stdin.end(`${v}\n`);
      });
      return;
    }
    if (!input) return;
    const { data, last } = input(name ? n - 1 : n);
    if (last) stdin.end(data);
    else stdin.write(data);
  };
  const stdout = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) {
        sawReady();
        answer(++readies);
      }
      done();
    },
  });
  if (!input && !name) stdin.end();
  const done = (async () => {
    try {
      const r = await exec({ signal, stdin, stdout });
      if (r.code !== 0) throw new BangerError(ErrorCode.Internal, `giving the guest its identity failed (exit ${r.code}): ${r.stderr.toString().trim()}`);
    } finally {
      if (!stdin.writableEnded) stdin.end();
    }
  })();
  const started = Promise.race([
    ready,
    done.then(() => {
      throw new BangerError(ErrorCode.Internal, 'the identity program ended before it asked for anything');
    }),
  ]);
  started.catch(() => undefined); // applyIdentity waits for `done` alone
  return { ready: started, done };
}

/** `ip -batch` lines that move a resumed tap guest's eth0 to its own MAC and address. */
export function tapBatch(t: GuestTapIdentity): string {
  if (!MAC_RE.test(t.mac) || !/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(t.ipCidr) || !/^\d{1,3}(\.\d{1,3}){3}$/.test(t.gateway))
    throw new BangerError(ErrorCode.Internal, `bad tap identity ${JSON.stringify(t)}`);
  return [
    `link set dev eth0 address ${t.mac}`,
    'addr flush dev eth0 scope global',
    `addr add ${t.ipCidr} dev eth0`,
    `route replace default via ${t.gateway} dev eth0`,
    'neigh flush dev eth0',
    '',
  ].join('\n');
}

function checked(v: string, re: RegExp, what: string): string {
  if (!re.test(v)) throw new BangerError(ErrorCode.Internal, `bad ${what} for a guest identity: ${JSON.stringify(v)}`);
  return v;
}

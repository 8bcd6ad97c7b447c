/**
 * The composition root: builds every service with its dependencies, reconciles state with reality, then
 * serves RPC on the unix socket. VMs outlive the daemon. main.ts runs it as a process; integration tests
 * run it in-process on a temporary BANGER_HOME.
 */
import { homedir, userInfo } from 'node:os';
import { chmodSync, mkdirSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Paths } from '../shared/paths.js';
import type { Logger } from '../shared/logger.js';
import { BUILD_ID, VERSION } from '../shared/version.js';
import { runCommand } from '../shared/command.js';
import { openDatabase } from './store/db.js';
import { ImageRepo } from './store/repos/images.js';
import { VmRepo } from './store/repos/vms.js';
import { ImageService } from './services/image/service.js';
import { imageBuilder } from './services/image/builder.js';
import { procHost } from './services/image/leftovers.js';
import { rootlessRemove, userNsRunner } from './services/image/rootless.js';
import { rootlessChecks } from './services/image/rootless-checks.js';
import { describeRange, userNetworkDefaults } from '../shared/user-network.js';
import type { ImageBuilder } from './services/image/service.js';
import { VmService } from './services/vm/service.js';
import { SnapshotService } from './services/snapshot/service.js';
import { failedPrecondition } from '../errors/index.js';
import { PoolService } from './services/pool/service.js';
import { resolveAgentBundle } from './services/image/inputs.js';
import { WorkspaceService } from './services/workspace/service.js';
import { DoctorService } from './services/doctor.js';
import { KvmAccelResolver } from './services/accel.js';
import { HostViews } from './services/host-views.js';
import { TapNetwork } from './services/network/tap.js';
import { VmDnsServer, type ListenAddress } from './services/dns/server.js';
import { dnsAskers } from './services/dns/askers.js';
import { loadConfig, type BangerConfig } from '../shared/config.js';
import { acquireDaemonLock, type DaemonLock } from './store/daemon-lock.js';
import { DnsHostIntegration } from './services/dns/host-integration.js';
import { KvmProbeCache } from './vmm/accel.js';
import { QemuDriver } from './vmm/qemu/driver.js';
import { FirecrackerDriver } from './vmm/firecracker/driver.js';
import type { DriverRegistry, VmmDriver, VmmName } from './vmm/driver.js';
import { guestKernelArgs, hostTscKhz } from './guest/init/cmdline.js';
import { generateEd25519 } from './guest/keys.js';
import { RpcServer } from './rpc/server.js';
import { AttachRegistry, ExecRegistry, buildHandlers } from './rpc/handlers/index.js';
import { SessionService } from './services/session/service.js';
import { IdentitySync } from './services/sync/service.js';

function ensureStateDir(paths: Paths): void {
  mkdirSync(paths.root, { recursive: true, mode: 0o700 });
  chmodSync(paths.root, 0o700);
  for (const d of [paths.logsDir, paths.imagesDir, paths.vmsDir, paths.sshDir, paths.cacheDir])
    mkdirSync(d, { recursive: true, mode: 0o700 });
}

function ensureClientKey(paths: Paths): { privateKey: string; publicKey: string } {
  if (existsSync(paths.sshPrivateKey) && existsSync(paths.sshPublicKey)) {
    return {
      privateKey: readFileSync(paths.sshPrivateKey, 'utf8'),
      publicKey: readFileSync(paths.sshPublicKey, 'utf8').trim(),
    };
  }
  const kp = generateEd25519('banger');
  writeFileSync(paths.sshPrivateKey, kp.privateKey, { mode: 0o600 });
  writeFileSync(paths.sshPublicKey, kp.publicKey + '\n', { mode: 0o644 });
  return kp;
}

export interface DaemonOptions {
  paths: Paths;
  log: Logger;
  /** Builds images; default: mmdebstrap from the host's mirror. Tests inject a fake. */
  build?: ImageBuilder;
  /** Where the DNS server listens and which hosts file `dns install` edits; tests use a free port and a temp file. */
  dns?: { listen: ListenAddress[]; hostsFile?: string };
  /** Called when a client asks the daemon to stop (daemon.stop). */
  onStopRequest: () => void;
}

export interface RunningDaemon {
  /** Stops serving and closes the database; VMs keep running. */
  stop(): Promise<void>;
}

export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  const { paths } = opts;
  const config = loadConfig(paths.config, process.getuid?.() ?? 0);
  ensureStateDir(paths);
  // Before anything touches state: a second daemon started at the same moment stops here.
  const lock = acquireDaemonLock(paths.daemonLock);
  try {
    // What a daemon killed mid-import left (the lock says none other runs here).
    rmSync(paths.tmpDir, { recursive: true, force: true });
    mkdirSync(paths.tmpDir, { mode: 0o700 });
    return await serve(opts, config, lock);
  } catch (e) {
    lock.release();
    throw e;
  }
}

async function serve(opts: DaemonOptions, config: BangerConfig, lock: DaemonLock): Promise<RunningDaemon> {
  const { paths, log } = opts;

  const startedAt = new Date();
  log.info({ version: VERSION, home: paths.root }, 'bangerd starting');

  const db = openDatabase(paths.database);
  chmodSync(paths.database, 0o600);
  const vmRepo = new VmRepo(db);
  const imageRepo = new ImageRepo(db);
  const clientKey = ensureClientKey(paths);

  const qemu = new QemuDriver({ run: runCommand, log: log.child({ vmm: 'qemu' }), tcgCacheMib: config.qemu.tcgCacheMib });
  const firecracker = new FirecrackerDriver({ log: log.child({ vmm: 'firecracker' }) });
  const drivers: DriverRegistry = new Map<VmmName, VmmDriver>([
    ['qemu', qemu],
    ['firecracker', firecracker],
  ]);
  const accel = new KvmAccelResolver({ qemu, cache: new KvmProbeCache(paths.probeCache), log });
  const tscKhz = hostTscKhz(await readFile('/proc/cpuinfo', 'utf8').catch(() => ''));

  const dnsVms = () => vmRepo.list().map((v) => ({ name: v.name, address: v.hostAddress }));
  const dnsServer = new VmDnsServer({
    lookup: (n) => vmRepo.byName(n.toLowerCase())?.hostAddress,
    reverse: (ip) => dnsVms().find((v) => v.address === ip)?.name,
    log: log.child({ service: 'dns' }),
    mayAsk: await dnsAskers(process.getuid?.() ?? 0),
  });
  await dnsServer
    .listen(opts.dns?.listen ?? [{ host: config.dns.address, port: config.dns.port }])
    .catch((err: unknown) => log.warn({ err }, 'DNS server not started: .vm names will not resolve through DNS'));
  const dnsHost = new DnsHostIntegration({
    stateFile: paths.dnsState,
    hostsFile: opts.dns?.hostsFile ?? '/etc/hosts',
    dnsAddress: config.dns.address,
    dnsPort: config.dns.port,
    run: runCommand,
    log,
    uid: process.getuid?.() ?? 0,
  });
  await dnsHost.reapply(dnsVms()).catch((err: unknown) => log.warn({ err }, 'DNS host integration not re-applied'));
  const tap = new TapNetwork({
    run: runCommand,
    statePath: paths.tapState,
    config: config.network.tap,
    log: log.child({ service: 'tap' }),
    dnsPort: config.dns.port,
  });
  const tapNetworking = {
    supported: (signal?: AbortSignal) => TapNetwork.supported(runCommand, signal),
    attach: tap.attach.bind(tap),
    detach: tap.detach.bind(tap),
    reconcile: tap.reconcile.bind(tap),
  };
  const dnsOnBridge = new Set<string>();
  const hostViews = new HostViews({
    paths,
    vms: vmRepo,
    log,
    listeners: [async (list) => dnsHost.sync(list)],
  });
  // A normal user's builds (and their leftovers) go through a user namespace: see image/rootless.ts.
  const userNs = (process.getuid?.() ?? 0) !== 0 ? userNsRunner(runCommand) : undefined;
  const images = new ImageService({
    paths,
    images: imageRepo,
    vms: vmRepo,
    build: opts.build ?? imageBuilder({ run: runCommand, log, paths, userNs }),
    log,
    ...(userNs ? { leftovers: procHost(runCommand, rootlessRemove(userNs)) } : {}),
  });
  const identity = new IdentitySync({
    run: runCommand,
    entries: () => loadConfig(paths.config, process.getuid?.() ?? 0).sync,
    defaultHome: homedir(),
    now: () => new Date(),
  });
  // Read once: every start puts the daemon's own guest agent in the VM's seed (see SEED_FILES.agent).
  let agentBundle: Promise<Buffer | undefined> | undefined;
  const readAgentBundle = () =>
    (agentBundle ??= Promise.resolve()
      .then(() => readFile(resolveAgentBundle()))
      .catch((e: unknown) => {
        log.warn({ err: (e as Error).message }, 'no guest agent bundle: VMs run their image\'s agent');
        return undefined;
      }));
  const vms = new VmService({
    paths,
    vms: vmRepo,
    images,
    drivers,
    accel,
    kernelCmdline: (vm, accel) =>
      guestKernelArgs({ tscKhz, noAgent: !vm.agent, aslr: accel !== 'tcg' || config.qemu.tcgGuestAslr }).join(' '),
    run: runCommand,
    log,
    clientKey,
    uid: () => process.getuid?.() ?? 0,
    onVmsChanged: () => void hostViews.sync(),
    // `snapshots` is made below, before anything can delete a VM.
    onVmDeleted: () => void snapshots.collectForks(),
    tap: tapNetworking,
    defaultNetwork: config.network.defaultMode,
    bootTimeoutMs: config.boot.timeoutSeconds * 1000,
    silentConsoleMs: config.boot.silentSeconds * 1000,
    onTapAttached: async (gateway) => {
      // Guests on the bridge reach banger's DNS, and nothing else of the host, at the bridge address.
      if (dnsOnBridge.has(gateway)) return;
      await dnsServer.listen([{ host: gateway, port: config.dns.port }]);
      dnsOnBridge.add(gateway);
    },
    identity,
    agentBundle: readAgentBundle,
  });
  const workspaces = new WorkspaceService({
    vms,
    repo: vmRepo,
    run: runCommand,
    log: log.child({ service: 'workspace' }),
    tmpDir: paths.tmpDir,
  });
  const sessions = new SessionService({ vms: vms.guest, log: log.child({ service: 'session' }) });
  const snapshots = new SnapshotService({ paths, vms, images, run: runCommand, log: log.child({ service: 'snapshot' }) });
  const pools = new PoolService({
    paths,
    vms,
    requireImage: (name) => {
      const i = images.show(name);
      if (i.status !== 'ready') throw failedPrecondition(`image '${name}' is ${i.status}`, `build it: \`banger image build ${name}\``);
    },
    defaultNetwork: config.network.defaultMode,
    identity,
    onVmsChanged: () => void hostViews.sync(),
    log: log.child({ service: 'pool' }),
  });
  const doctor = new DoctorService({
    paths,
    drivers,
    run: runCommand,
    tapSupported: (signal) => TapNetwork.supported(runCommand, signal),
    loopback: {
      range: describeRange(userNetworkDefaults(process.getuid?.() ?? 0).range),
      dns: `${config.dns.address}:${config.dns.port}`,
    },
    rootless:
      userNs &&
      ((signal) =>
        rootlessChecks(
          {
            read: (p) => readFile(p, 'utf8').catch(() => undefined),
            stat: (p) => stat(p).then((s) => ({ mode: s.mode, uid: s.uid }), () => undefined),
            user: { name: userInfo().username, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
            userNs,
          },
          signal,
        )),
    kvm: async (signal) => {
      const ready = imageRepo.list().find((i) => i.status === 'ready');
      if (!ready) return accel.lastVerdict();
      return accel.verdict(images.byIdReady(ready.id), signal);
    },
  });

  await images.reconcile();
  await vms.reconcile();
  await snapshots.reconcile();
  await snapshots.dropForkMemory();
  await snapshots.collectForks();
  await pools.reconcile();
  await hostViews.sync();

  const execs = new ExecRegistry();
  const attaches = new AttachRegistry();
  const server: RpcServer = new RpcServer({
    socketPath: paths.socket,
    log,
    handlers: buildHandlers(
      {
        vms,
        snapshots,
        pools,
        workspaces,
        sessions,
        images,
        doctor,
        dnsHost,
        tap,
        defaultNetwork: config.network.defaultMode,
        vmRecords: () => vmRepo.list(),
        dnsVms,
        status: () => ({
          pid: process.pid,
          version: VERSION,
          build: BUILD_ID,
          connections: server.connectionCount,
          home: paths.root,
          socket: paths.socket,
          logFile: paths.daemonLog,
          startedAt: startedAt.toISOString(),
          vms: { total: vmRepo.list().length, running: vms.runningCount() },
        }),
        shutdown: () => setImmediate(opts.onStopRequest),
        log,
      },
      execs,
      attaches,
    ),
    onConnection: (c) => {
      execs.attach(c);
      attaches.attach(c);
    },
  });
  await server.listen();
  writeFileSync(paths.daemonPidFile, `${process.pid}\n`, { mode: 0o600 });
  // Read by the CLI instead of asking daemon.status which build serves (one round trip fewer a command).
  writeFileSync(paths.daemonBuildFile, `${process.pid} ${BUILD_ID}\n`, { mode: 0o600 });
  log.info({ socket: paths.socket }, 'bangerd ready');
  let stopped = false;
  return {
    async stop() {
      if (stopped) return;
      stopped = true;
      log.info('bangerd stopping (VMs keep running)');
      pools.close();
      await server.close();
      await dnsServer.close();
      vms.detachAll();
      db.close();
      rmSync(paths.daemonPidFile, { force: true });
      rmSync(paths.daemonBuildFile, { force: true });
      lock.release();
    },
  };
}
